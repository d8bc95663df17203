//go:build integration

package webhook

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

const (
	demoClientID   = "91ff0ee7-35fc-46d0-9cd0-51a7ea9ec7f2"
	demoResourceID = "/subscriptions/2d31b5ab-0ddc-4991-bf8d-61b6ad196f5a/resourceGroups/MC_rg_cluster_westus2/providers/Microsoft.ManagedIdentity/userAssignedIdentities/demo"
)

// newNamespace gives each test its own namespace, so tests do not see each
// other's bindings.
func newNamespace(t *testing.T) string {
	t.Helper()
	controlPlane.Start(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "t-" + rand.String(8)}}
	if err := admin.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// kubectl runs the control plane's kubectl as the admin, feeding stdin.
func kubectl(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(kubectlArgv[0], append(kubectlArgv[1:], args...)...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// walkthrough returns the walkthrough's manifests (steps 3, 5, 6) with its
// shell variables filled in.
func walkthrough(identityName, clientID, resourceID string) (identity, binding, pod string) {
	identity = fmt.Sprintf(`apiVersion: "aadpodidentity.k8s.io/v1"
kind: AzureIdentity
metadata:
  name: %s
spec:
  type: 0
  resourceID: %s
  clientID: %s
`, identityName, resourceID, clientID)
	binding = fmt.Sprintf(`apiVersion: "aadpodidentity.k8s.io/v1"
kind: AzureIdentityBinding
metadata:
  name: %[1]s-binding
spec:
  azureIdentity: %[1]s
  selector: %[1]s
`, identityName)
	pod = fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: demo
  labels:
    aadpodidbinding: %s
spec:
  containers:
  - name: demo
    image: mcr.microsoft.com/oss/azure/aad-pod-identity/demo:v1.7.5
    args:
      - --subscription-id=2d31b5ab-0ddc-4991-bf8d-61b6ad196f5a
      - --resource-group=MC_rg_cluster_westus2
      - --identity-client-id=%s
    env:
      - name: MY_POD_NAME
        valueFrom:
          fieldRef:
            fieldPath: metadata.name
      - name: MY_POD_NAMESPACE
        valueFrom:
          fieldRef:
            fieldPath: metadata.namespace
      - name: MY_POD_IP
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
  nodeSelector:
    kubernetes.io/os: linux
`, identityName, clientID)
	return identity, binding, pod
}

func apply(t *testing.T, ns, manifest string) (stderr string) {
	t.Helper()
	_, stderr, err := kubectl(t, manifest, "apply", "-n", ns, "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, stderr)
	}
	return stderr
}

func getPod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{}
	if err := admin.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

// applyWalkthrough starts the webhook and applies the walkthrough's identity,
// binding and demo pod with kubectl into a new namespace.
func applyWalkthrough(t *testing.T) (namespace string) {
	t.Helper()
	startWebhook(t, Options{})
	ns := newNamespace(t)
	identity, binding, pod := walkthrough("demo", demoClientID, demoResourceID)
	apply(t, ns, identity)
	apply(t, ns, binding)
	apply(t, ns, pod)
	return ns
}

func TestWalkthroughPodIsGatedAndAnnotated(t *testing.T) {
	ns := applyWalkthrough(t)

	got := getPod(t, ns, "demo")
	if want := ns + "/demo"; got.Annotations[aadv1.AnnotationIdentities] != want {
		t.Errorf("identities annotation = %q, want %q", got.Annotations[aadv1.AnnotationIdentities], want)
	}
	if got.Annotations[aadv1.AnnotationClientIDs] != demoClientID {
		t.Errorf("client-ids annotation = %q, want %q", got.Annotations[aadv1.AnnotationClientIDs], demoClientID)
	}
	if !identity.HasGate(got) {
		t.Errorf("pod has no %s gate: %+v", aadv1.SchedulingGate, got.Spec.SchedulingGates)
	}
	if n := testutil.ToFloat64(admissionOutcomes.WithLabelValues("mutate-pod", "true", reasonResolved)); n < 1 {
		t.Errorf("admission outcome metric for resolved pods = %v, want >= 1", n)
	}
	out, _, err := kubectl(t, "", "get", "azureidentities,azureidentitybindings", "-n", ns)
	if err != nil || !strings.Contains(out, demoClientID) || !strings.Contains(out, "demo-binding") {
		t.Errorf("kubectl get printer columns: %v\n%s", err, out)
	}
}

func TestLabelWithoutBindingIsAdmittedWithWarning(t *testing.T) {
	startWebhook(t, Options{})
	ns := newNamespace(t)
	_, _, pod := walkthrough("nobody", demoClientID, demoResourceID)
	stderr := apply(t, ns, pod)
	if !strings.Contains(stderr, "Warning:") || !strings.Contains(stderr, "matches no AzureIdentityBinding") {
		t.Errorf("kubectl printed no admission warning: %q", stderr)
	}
	got := getPod(t, ns, "demo")
	if identity.HasGate(got) {
		t.Error("pod without identities was gated")
	}
	if v, ok := got.Annotations[aadv1.AnnotationIdentities]; !ok || v != "" {
		t.Errorf("identities annotation = %q (present %v), want empty", v, ok)
	}
}

func TestBindingInAnotherNamespace(t *testing.T) {
	podNS, bindingNS := newNamespace(t), newNamespace(t)
	// A selector of its own: with cross-namespace matching, other tests'
	// bindings would match too.
	identity, binding, pod := walkthrough("cross", demoClientID, demoResourceID)
	stop := startWebhook(t, Options{})
	apply(t, bindingNS, identity)
	apply(t, bindingNS, binding)
	stop()

	for _, tt := range []struct {
		cross bool
		want  string
	}{{false, ""}, {true, bindingNS + "/cross"}} {
		t.Run(fmt.Sprintf("allow-cross-namespace=%v", tt.cross), func(t *testing.T) {
			stop := startWebhook(t, Options{AllowCrossNamespace: tt.cross})
			defer stop()
			apply(t, podNS, pod)
			got := getPod(t, podNS, "demo")
			if got.Annotations[aadv1.AnnotationIdentities] != tt.want {
				t.Errorf("identities annotation = %q, want %q", got.Annotations[aadv1.AnnotationIdentities], tt.want)
			}
			if err := admin.Delete(context.Background(), got, client.GracePeriodSeconds(0)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCreatorSuppliedAnnotationsAreStripped(t *testing.T) {
	startWebhook(t, Options{})
	ns := newNamespace(t)
	pod := labelled("nobody")
	pod.Namespace = ns
	pod.Annotations = map[string]string{
		aadv1.AnnotationIdentities: "kube-system/cluster-admin",
		aadv1.AnnotationClientIDs:  demoClientID,
		aadv1.AnnotationAssignment: aadv1.AssignmentAssigned,
		"example.com/kept":         "yes",
	}
	if err := admin.Create(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got := getPod(t, ns, pod.Name)
	want := map[string]string{aadv1.AnnotationIdentities: "", aadv1.AnnotationClientIDs: "", "example.com/kept": "yes"}
	for k, v := range want {
		if got.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, got.Annotations[k], v)
		}
	}
	if _, ok := got.Annotations[aadv1.AnnotationAssignment]; ok {
		t.Errorf("creator-supplied %s survived", aadv1.AnnotationAssignment)
	}
}

// impersonate returns a client acting as user; service accounts carry their
// groups, as the apiserver's authenticator would set them.
func impersonate(t *testing.T, user string) client.Client {
	t.Helper()
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	if strings.HasPrefix(user, "system:serviceaccount:") {
		c.Impersonate.Groups = append(c.Impersonate.Groups, "system:serviceaccounts")
	}
	cl, err := client.New(c, client.Options{Scheme: identity.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func TestOnlyTrustedServiceAccountsChangeProtectedFields(t *testing.T) {
	ns := applyWalkthrough(t)

	alice := "alice"
	webhookUser := "system:serviceaccount:" + strings.Replace(webhookSA, "/", ":", 1)
	assignerUser := "system:serviceaccount:" + strings.Replace(assignerSA, "/", ":", 1)
	tests := []struct {
		name    string
		modify  func(*corev1.Pod)
		user    string
		allowed bool
	}{
		{"label by user", func(p *corev1.Pod) { p.Labels[aadv1.BindingLabel] = "admin" }, alice, false},
		{"annotation by user", func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentAssigned }, alice, false},
		{"gate by user", func(p *corev1.Pod) { p.Spec.SchedulingGates = nil }, alice, false},
		{"label by webhook", func(p *corev1.Pod) { p.Labels[aadv1.BindingLabel] = "demo2" }, webhookUser, true},
		{"annotation by assigner", func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentAssigned }, assignerUser, true},
		{"gate by assigner", func(p *corev1.Pod) { p.Spec.SchedulingGates = nil }, assignerUser, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := getPod(t, ns, "demo")
			tt.modify(pod)
			err := impersonate(t, tt.user).Update(context.Background(), pod)
			switch {
			case tt.allowed && err != nil:
				t.Fatalf("trusted update denied: %v", err)
			case !tt.allowed && err == nil:
				t.Fatal("untrusted update allowed")
			case !tt.allowed && (!apierrors.IsForbidden(err) || !strings.Contains(err.Error(), tt.user+" may not change")):
				t.Fatalf("denial does not say why: %v", err)
			}
		})
	}
	// An unrelated change by an ordinary user is allowed.
	p := getPod(t, ns, "demo")
	p.Annotations["example.com/owner"] = "alice"
	if err := impersonate(t, "alice").Update(context.Background(), p); err != nil {
		t.Fatalf("unrelated update denied: %v", err)
	}
}

func TestInvalidCustomResourcesAreRejected(t *testing.T) {
	startWebhook(t, Options{})
	ns := newNamespace(t)
	tests := []struct {
		name string
		spec string
		want string
	}{
		{"type out of range", `kind: AzureIdentity
spec: {type: 3, clientID: ` + demoClientID + `}`, "spec.type"},
		{"type 0 with bad resourceID", `kind: AzureIdentity
spec: {type: 0, clientID: ` + demoClientID + `, resourceID: /subscriptions/x/resourceGroups/y/providers/Microsoft.Compute/virtualMachines/z}`, "needs resourceID of the form"},
		{"type 0 with bad clientID", `kind: AzureIdentity
spec: {type: 0, clientID: not-a-guid, resourceID: ` + demoResourceID + `}`, "needs clientID, a GUID"},
		{"type 1 without tenant", `kind: AzureIdentity
spec: {type: 1, clientID: abc, clientPassword: {name: s, namespace: ` + ns + `}}`, "need tenantID"},
		{"type 2 without secret", `kind: AzureIdentity
spec: {type: 2, clientID: abc, tenantID: t}`, "need clientPassword"},
		{"binding without selector", `kind: AzureIdentityBinding
spec: {azureIdentity: demo}`, "spec.selector"},
		{"binding with invalid selector", `kind: AzureIdentityBinding
spec: {azureIdentity: demo, selector: "not a label value!"}`, "spec.selector"},
		{"type 0 with bad resourceID, 1.x spelling", `kind: AzureIdentity
spec: {type: 0, ClientID: ` + demoClientID + `, ResourceID: /subscriptions/x/resourceGroups/y/providers/Microsoft.Compute/virtualMachines/z}`, "needs resourceID of the form"},
		{"binding without selector in either spelling", `kind: AzureIdentityBinding
spec: {AzureIdentity: demo}`, "selector is required"},
		// The CRD's own rule (the webhook's message says "must be ASCII"): (?i) in the form's regex folds these.
		{"resourceID with long s (U+017F) for s", `kind: AzureIdentity
spec: {type: 0, clientID: ` + demoClientID + `, resourceID: "` + strings.Replace(demoResourceID, "/subscriptions/", "/\u017fubscriptions/", 1) + `"}`, "must be printable ASCII"},
		{"resourceID with Kelvin sign (U+212A) for k", `kind: AzureIdentity
spec: {type: 0, clientID: ` + demoClientID + `, resourceID: "` + strings.TrimSuffix(demoResourceID, "demo") + "\u212aubelet" + `"}`, "must be printable ASCII"},
		{"resourceID with long s, 1.x spelling", `kind: AzureIdentity
spec: {type: 0, ClientID: ` + demoClientID + `, ResourceID: "` + strings.Replace(demoResourceID, "/subscriptions/", "/\u017fubscriptions/", 1) + `"}`, "must be printable ASCII"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			manifest := "apiVersion: aadpodidentity.k8s.io/v1\nmetadata: {name: bad}\n" + tt.spec + "\n"
			_, stderr, err := kubectl(t, manifest, "apply", "-n", ns, "-f", "-")
			if err == nil {
				t.Fatal("invalid object accepted")
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("error does not mention %q:\n%s", tt.want, stderr)
			}
		})
	}
	t.Run("binding to a missing identity warns", func(t *testing.T) {
		_, binding, _ := walkthrough("ghost", demoClientID, demoResourceID)
		if stderr := apply(t, ns, binding); !strings.Contains(stderr, "does not exist yet") {
			t.Errorf("no warning for a binding to a missing identity: %q", stderr)
		}
	})
}

// Manifests written for aad-pod-identity 1.x, whose decoding ignored case,
// keep working: ResourceID, ClientID, AzureIdentity and Selector are stored
// as today's fields (which printer columns and admission policies read),
// with a warning naming them.
func TestLegacySpellingsAreAccepted(t *testing.T) {
	startWebhook(t, Options{})
	ns := newNamespace(t)
	identity, binding, pod := walkthrough("legacy", demoClientID, demoResourceID)
	identity = strings.NewReplacer("resourceID:", "ResourceID:", "clientID:", "ClientID:").Replace(identity)
	binding = strings.NewReplacer("azureIdentity:", "AzureIdentity:", "selector:", "Selector:").Replace(binding)
	for _, m := range []string{identity, binding} {
		if stderr := apply(t, ns, m); !strings.Contains(stderr, "1.x's spelling") {
			t.Errorf("no warning about the 1.x spellings: %q", stderr)
		}
	}
	for _, tc := range []struct {
		kind, name string
		want       map[string]any
	}{
		{"AzureIdentity", "legacy", map[string]any{"type": int64(0), "resourceID": demoResourceID, "clientID": demoClientID}},
		{"AzureIdentityBinding", "legacy-binding", map[string]any{"azureIdentity": "legacy", "selector": "legacy"}},
	} {
		stored := &unstructured.Unstructured{}
		stored.SetGroupVersionKind(aadv1.GroupVersion.WithKind(tc.kind))
		if err := admin.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: tc.name}, stored); err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(tc.want, stored.Object["spec"]); d != "" {
			t.Errorf("stored %s spec (-want +got):\n%s", tc.kind, d)
		}
	}
	apply(t, ns, pod)
	if got := getPod(t, ns, "demo"); got.Annotations[aadv1.AnnotationIdentities] != ns+"/legacy" || got.Annotations[aadv1.AnnotationClientIDs] != demoClientID {
		t.Errorf("pod annotations %v: the 1.x-spelled binding and identity were not resolved", got.Annotations)
	}
}

func TestWebhookDownFailsClosedForLabelledPodsOnly(t *testing.T) {
	stop := startWebhook(t, Options{})
	stop()
	ns := newNamespace(t)
	ctx := context.Background()

	labelledPod := labelled("demo")
	labelledPod.Namespace = ns
	if err := admin.Create(ctx, labelledPod); err == nil || !strings.Contains(err.Error(), "failed calling webhook") {
		t.Fatalf("labelled pod with the webhook down: err = %v, want a webhook call failure", err)
	}
	plain := labelled("demo")
	plain.Namespace, plain.Labels = ns, nil
	if err := admin.Create(ctx, plain); err != nil {
		t.Fatalf("unlabelled pod with the webhook down: %v", err)
	}
}
