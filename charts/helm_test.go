//go:build integration

package charts

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

var update = flag.Bool("update", false, "rewrite the golden files (make update-golden)")

// cases are the value sets with golden renderings, in testdata/<case>.values.yaml.
var cases = []string{"default", "builtin-certs", "custom-issuer", "federated"}

const (
	goldenRelease   = "aad-pod-identity"
	goldenNamespace = "aad-pod-identity"
	// testTenant is the Azure AD tenant of the federated case.
	testTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
)

func chartDir() string { return filepath.Join(framework.RepoRoot(), "charts", "aad-pod-identity") }

func valuesFile(c string) string { return filepath.Join("testdata", c+".values.yaml") }

// helm runs the helm binary that `make chart-test-deps` builds.
func helm(args ...string) (string, error) {
	bin := os.Getenv("HELM")
	if bin == "" {
		return "", errors.New("HELM is not set: run the tests through `make test`, which builds helm and sets it")
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A private home keeps helm away from the user's repositories and plugins.
	home := os.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "aadpi-chart-helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "aadpi-chart-helm", "config"), "HELM_DATA_HOME="+filepath.Join(home, "aadpi-chart-helm", "data"))
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// render is `helm template` of the chart in namespace ns with the given
// values file (may be empty) and --set flags.
func render(release, ns, values string, set ...string) (string, error) {
	args := []string{"template", release, chartDir(), "--namespace", ns}
	if values != "" {
		args = append(args, "--values", values)
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return helm(args...)
}

// renderObjects renders the golden release with values and set, as objects.
func renderObjects(t *testing.T, values string, set ...string) []*unstructured.Unstructured {
	t.Helper()
	manifest, err := render(goldenRelease, goldenNamespace, values, set...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := objects(manifest)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// objects splits a rendering into its documents.
func objects(manifest string) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	dec := yaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decoding rendered manifest: %w", err)
		}
		if raw != nil {
			objs = append(objs, &unstructured.Unstructured{Object: raw})
		}
	}
}

func TestCRDsMatchConfig(t *testing.T) {
	want, err := filepath.Glob(filepath.Join(framework.RepoRoot(), "config", "crd", "*.yaml"))
	if err != nil || len(want) == 0 {
		t.Fatalf("no CRDs in config/crd: %v", err)
	}
	got, err := filepath.Glob(filepath.Join(chartDir(), "crds", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("chart has %d CRD files, config/crd has %d: run `make chart-crds`", len(got), len(want))
	}
	for _, w := range want {
		wb, err := os.ReadFile(w)
		if err != nil {
			t.Fatal(err)
		}
		gb, err := os.ReadFile(filepath.Join(chartDir(), "crds", filepath.Base(w)))
		if err != nil || !bytes.Equal(gb, wb) {
			t.Errorf("crds/%s differs from config/crd (%v): run `make chart-crds`", filepath.Base(w), err)
		}
	}
}

func TestLint(t *testing.T) {
	for _, c := range cases {
		t.Run(c, func(t *testing.T) {
			if out, err := helm("lint", "--strict", chartDir(), "--values", valuesFile(c)); err != nil {
				t.Errorf("%v\n%s", err, out)
			}
		})
	}
}

func TestGolden(t *testing.T) {
	for _, c := range cases {
		t.Run(c, func(t *testing.T) {
			got, err := render(goldenRelease, goldenNamespace, valuesFile(c))
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", c+".golden.yaml")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v: run `make update-golden`", err)
			}
			if got != string(want) {
				t.Errorf("helm template with %s differs from %s: run `make update-golden` and review the diff", valuesFile(c), golden)
			}
		})
	}
}

func TestSchemaRejectsBadValues(t *testing.T) {
	tests := []struct {
		name string
		set  []string
		want string
	}{
		{"unknown top-level value", []string{"webhooks.replicas=2"}, "webhooks"},
		{"zero webhook replicas", []string{"webhook.replicas=0"}, "replicas"},
		{"bad credential source", []string{"assigner.azure.source=file"}, "source"},
		{"secret without subscription", []string{"assigner.azure.source=secret", "assigner.azure.tenantID=t", "assigner.azure.resourceGroup=rg", "assigner.azure.useManagedIdentityExtension=true"}, "subscriptionID"},
		{"secret without credentials", []string{"assigner.azure.source=secret", "assigner.azure.tenantID=t", "assigner.azure.subscriptionID=s", "assigner.azure.resourceGroup=rg"}, "clientSecret"},
		{"existing secret without name", []string{"assigner.azure.source=existingSecret"}, "existingSecret"},
		{"issuerRef without kind", []string{"certManager.issuerRef.name=corp"}, "kind"},
		{"several assigners without leader election", []string{"assigner.leaderElect=false"}, "leaderElect"},
		{"bad duration", []string{"assigner.gcGracePeriod=five minutes"}, "gcGracePeriod"},
		{"identity type out of range", []string{"azureIdentities[0].name=x", "azureIdentities[0].type=3"}, "type"},
		{"user-assigned identity without client ID", []string{"azureIdentities[0].name=x", "azureIdentities[0].type=0", "azureIdentities[0].resourceID=/r"}, "clientID"},
		{"bad metadata path", []string{"nmi.allowedMetadataPaths={metadata/instance}"}, "allowedMetadataPaths"},
		{"unknown mode", []string{"policy.mode=addon"}, "mode"},
		{"mode where it was", []string{"mode=managed"}, "mode is now policy.mode"},
		{"cross-namespace matching where it was", []string{"webhook.allowCrossNamespace=true"}, "webhook.allowCrossNamespace is now policy.allowCrossNamespace"},
		{"runtime socket without a directory", []string{"nmi.criSocket=/containerd.sock"}, "criSocket"},
		{"identity scope that is not an ARM scope", []string{"policy.identityScopes.team-a={team-a-identities}"}, "identityScopes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(goldenRelease, goldenNamespace, "", tc.set...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("helm template --set %v = %v, want a schema error naming %q", tc.set, err, tc.want)
			}
		})
	}
}

// The webhook, the assigner and NMI read one configuration, so that they
// cannot disagree on the policy (how a label resolves, which identities
// are out of scope or protected): each mounts the release's ConfigMap and
// passes --config, and the values reach that ConfigMap.
func TestComponentsReadOneConfiguration(t *testing.T) {
	scopes := filepath.Join(t.TempDir(), "scopes.yaml")
	err := os.WriteFile(scopes, []byte(`policy:
 identityScopes:
  team-b: ["/subscriptions/s/resourceGroups/b"]
  "*": ["/subscriptions/s/resourceGroups/shared", "/subscriptions/t"]
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	webhook, assigner, nmi := "Deployment/"+goldenRelease+"-webhook", "Deployment/"+goldenRelease+"-assigner", "DaemonSet/"+goldenRelease+"-nmi"
	tests := []struct {
		name, values string
		set          []string
		check        func(*config.Configuration) error
		managed      bool // no assigner
	}{
		{name: "same namespace", check: func(c *config.Configuration) error {
			return want(!c.Policy.AllowCrossNamespace, "allowCrossNamespace %v", c.Policy.AllowCrossNamespace)
		}},
		{name: "cross namespace", set: []string{"policy.allowCrossNamespace=true"}, check: func(c *config.Configuration) error {
			return want(c.Policy.AllowCrossNamespace, "allowCrossNamespace %v", c.Policy.AllowCrossNamespace)
		}},
		{name: "identity scopes", values: scopes, check: func(c *config.Configuration) error {
			got := strings.Join(c.Policy.ScopeEntries(), ",")
			return want(got == "*=/subscriptions/s/resourceGroups/shared,*=/subscriptions/t,team-b=/subscriptions/s/resourceGroups/b", "scopes %s", got)
		}},
		{name: "managed mode", set: []string{"policy.mode=managed"}, managed: true, check: func(c *config.Configuration) error {
			return want(c.Policy.Mode == config.ModeManaged, "mode %s", c.Policy.Mode)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs := renderObjects(t, tc.values, tc.set...)
			if err := tc.check(renderedConfig(t, objs, goldenNamespace)); err != nil {
				t.Error(err)
			}
			workloads := []string{webhook, assigner, nmi}
			if tc.managed {
				workloads = []string{webhook, nmi}
			}
			for _, w := range workloads {
				o := find(t, objs, w)
				if got := containerArgs(t, o)["--config"]; got != configPath {
					t.Errorf("%s: --config=%q, want %s", w, got, configPath)
				}
				if !mountsConfig(t, o) {
					t.Errorf("%s does not mount ConfigMap %s-config at %s", w, goldenRelease, path.Dir(configPath))
				}
			}
		})
	}
}

func want(ok bool, format string, args ...any) error {
	if ok {
		return nil
	}
	return fmt.Errorf("unexpected "+format, args...)
}

// find returns the object named kind/name.
func find(t *testing.T, objs []*unstructured.Unstructured, kindName string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind()+"/"+o.GetName() == kindName {
			return o
		}
	}
	t.Fatalf("the chart renders no %s", kindName)
	return nil
}

// mountsConfig reports whether the workload's first container mounts the
// release's configuration ConfigMap where --config reads it.
func mountsConfig(t *testing.T, o *unstructured.Unstructured) bool {
	t.Helper()
	spec, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
	var pod corev1.PodSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(spec, &pod); err != nil {
		t.Fatal(err)
	}
	for _, v := range pod.Volumes {
		if v.ConfigMap == nil || v.ConfigMap.Name != goldenRelease+"-config" {
			continue
		}
		for _, m := range pod.Containers[0].VolumeMounts {
			if m.Name == v.Name && m.MountPath == path.Dir(configPath) {
				return true
			}
		}
	}
	return false
}

// One default per setting, in code: what the chart renders by default is
// the code's default, but for what only the release can know.
func TestChartDefaultsAreTheCodes(t *testing.T) {
	objs := renderObjects(t, "")
	got := renderedConfig(t, objs, goldenNamespace)
	code, err := config.Load("", goldenNamespace)
	if err != nil {
		t.Fatal(err)
	}
	// The release's own names, and the runtime socket's path inside NMI's
	// pod (the chart mounts the node's), are the chart's to say.
	code.Webhook.ConfigurationName = goldenRelease
	code.Webhook.TrustedServiceAccounts = []string{goldenNamespace + "/" + goldenRelease + "-webhook", goldenNamespace + "/" + goldenRelease + "-assigner"}
	code.NMI.CRISocket = "/run/cri/containerd.sock"
	if diff := cmp.Diff(code, got); diff != "" {
		t.Errorf("the chart's defaults contradict the code's (-code +chart):\n%s", diff)
	}
}

// The webhook and the assigner put identities only where NMI runs: the
// policy.nmiNodeSelection they read is NMI's DaemonSet's own node
// selector, affinity and tolerations, whatever the values say.
func TestNMINodeSelectionIsTheDaemonSets(t *testing.T) {
	custom := filepath.Join(t.TempDir(), "nmi.yaml")
	err := os.WriteFile(custom, []byte(`nmi:
  nodeSelector: {agentpool: identity}
  tolerations: [{key: dedicated, operator: Equal, value: identity, effect: NoSchedule}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]}]
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for _, values := range []string{"", custom} {
		objs := renderObjects(t, values)
		var daemonSet corev1.PodSpec
		spec, _, _ := unstructured.NestedMap(find(t, objs, "DaemonSet/"+goldenRelease+"-nmi").Object, "spec", "template", "spec")
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(spec, &daemonSet); err != nil {
			t.Fatal(err)
		}
		sel := renderedConfig(t, objs, goldenNamespace).Policy.NMINodeSelection
		got := corev1.PodSpec{NodeSelector: sel.NodeSelector, Affinity: sel.Affinity, Tolerations: sel.Tolerations}
		want := corev1.PodSpec{NodeSelector: daemonSet.NodeSelector, Affinity: daemonSet.Affinity, Tolerations: daemonSet.Tolerations}
		if want.NodeSelector == nil || !equality.Semantic.DeepEqual(got, want) {
			t.Errorf("values %q: policy.nmiNodeSelection %s, want NMI's %+v", values, sel.JSON(), want)
		}
		if _, err := nodepool.ParseCoverage(sel.JSON()); err != nil {
			t.Error(err)
		}
	}
}

// The chart's webhook configurations are those of config/webhook (the ones
// the webhook's own tests run against), pointed at the chart's Service.
func TestWebhooksMatchConfig(t *testing.T) {
	wantM, wantV, err := framework.WebhookConfigurations()
	if err != nil {
		t.Fatal(err)
	}
	objs := renderObjects(t, "")
	var gotM admissionregistrationv1.MutatingWebhookConfiguration
	var gotV admissionregistrationv1.ValidatingWebhookConfiguration
	for _, o := range objs {
		switch o.GetKind() {
		case "MutatingWebhookConfiguration":
			err = runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &gotM)
		case "ValidatingWebhookConfiguration":
			err = runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &gotV)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	service := &admissionregistrationv1.ServiceReference{Namespace: goldenNamespace, Name: goldenRelease + "-webhook"}
	pointAtChart := func(cc *admissionregistrationv1.WebhookClientConfig) {
		cc.Service.Namespace, cc.Service.Name = service.Namespace, service.Name
	}
	for i := range wantM[0].Webhooks {
		pointAtChart(&wantM[0].Webhooks[i].ClientConfig)
	}
	for i := range wantV[0].Webhooks {
		pointAtChart(&wantV[0].Webhooks[i].ClientConfig)
	}
	sortByName := cmpopts.SortSlices(func(a, b admissionregistrationv1.ValidatingWebhook) bool { return a.Name < b.Name })
	if d := cmp.Diff(wantM[0].Webhooks, gotM.Webhooks); d != "" {
		t.Errorf("mutating webhooks differ from config/webhook (-want +got):\n%s", d)
	}
	if d := cmp.Diff(wantV[0].Webhooks, gotV.Webhooks, sortByName); d != "" {
		t.Errorf("validating webhooks differ from config/webhook (-want +got):\n%s", d)
	}
}
