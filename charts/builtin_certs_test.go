//go:build integration

package charts

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/webhook/certrotation"
)

// With certManager.enabled=false, the webhook's certificate rotation,
// configured by the flags the chart renders and running as the webhook's
// service account with only the chart's RBAC, fills the certificate Secret
// and injects its CA into both webhook configurations.
func TestBuiltinCertsWorkWithTheChartsRBAC(t *testing.T) {
	ctx := context.Background()
	ns, release := "aadpi-chart-rotation", "rotation"
	createNamespace(t, ns)
	manifest, err := render(release, ns, valuesFile("builtin-certs"), "fullnameOverride="+release)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := objects(manifest)
	if err != nil {
		t.Fatal(err)
	}
	rotation := renderedConfig(t, objs, ns).Webhook
	for _, o := range objs {
		switch o.GetKind() {
		case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
			neverMatch(t, o)
		case "Deployment":
			continue
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Secret":
		default:
			continue
		}
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatalf("creating %s %s: %v", o.GetKind(), o.GetName(), err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), o) })
	}
	if !rotation.CertRotation.Enabled {
		t.Fatalf("the configuration does not turn on the built-in certificates: %+v", rotation)
	}

	asWebhook := rest.CopyConfig(cfg)
	asWebhook.Impersonate = rest.ImpersonationConfig{
		UserName: fmt.Sprintf("system:serviceaccount:%s:%s-webhook", ns, release),
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
	mgr, err := ctrl.NewManager(asWebhook, ctrl.Options{Scheme: identity.Scheme(), Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	secretKey := types.NamespacedName{Namespace: ns, Name: rotation.CertRotation.SecretName}
	err = certrotation.Add(mgr, certrotation.Config{
		Secret: secretKey, ServiceName: rotation.CertRotation.ServiceName, WebhookConfigurationName: rotation.ConfigurationName,
		CertDir: t.TempDir(), CertName: "tls.crt", KeyName: "tls.key",
	})
	if err != nil {
		t.Fatal(err)
	}
	mgrCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- mgr.Start(mgrCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})

	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		secret := &corev1.Secret{}
		if err := k8s.Get(ctx, secretKey, secret); err != nil {
			return false, err
		}
		ca := secret.Data["ca.crt"]
		if len(ca) == 0 || len(secret.Data["tls.crt"]) == 0 {
			return false, nil
		}
		for _, kind := range []string{"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} {
			u := &unstructured.Unstructured{}
			u.SetAPIVersion("admissionregistration.k8s.io/v1")
			u.SetKind(kind)
			if err := k8s.Get(ctx, client.ObjectKey{Name: release}, u); err != nil {
				return false, err
			}
			hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
			for _, h := range hooks {
				bundle, _, _ := unstructured.NestedString(h.(map[string]any), "clientConfig", "caBundle")
				if bundle != base64.StdEncoding.EncodeToString(ca) {
					return false, nil
				}
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("the certificate was not issued and injected with the chart's RBAC: %v", err)
	}
}

// neverMatch keeps a rendered webhook configuration out of the other tests'
// admissions (no webhook server runs here); rotation does not look at it.
func neverMatch(t *testing.T, o *unstructured.Unstructured) {
	t.Helper()
	hooks, _, err := unstructured.NestedSlice(o.Object, "webhooks")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		h.(map[string]any)["namespaceSelector"] = map[string]any{"matchLabels": map[string]any{"aadpi-chart": "never"}}
	}
	if err := unstructured.SetNestedSlice(o.Object, hooks, "webhooks"); err != nil {
		t.Fatal(err)
	}
}

// configPath is where the chart mounts the components' configuration.
const configPath = "/etc/aad-pod-identity/config.yaml"

// renderedConfig is the configuration the chart renders into its
// ConfigMap, read as the components read it (strictly, defaulted, valid).
func renderedConfig(t *testing.T, objs []*unstructured.Unstructured, ns string) *config.Configuration {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "ConfigMap" || !strings.HasSuffix(o.GetName(), "-config") {
			continue
		}
		data, _, _ := unstructured.NestedString(o.Object, "data", "config.yaml")
		c, err := config.Decode([]byte(data))
		if err != nil {
			t.Fatalf("ConfigMap %s: %v\n%s", o.GetName(), err, data)
		}
		config.SetDefaults(c, ns)
		if errs := config.Validate(c); len(errs) > 0 {
			t.Fatalf("ConfigMap %s: %v", o.GetName(), errs.ToAggregate())
		}
		return c
	}
	t.Fatal("the chart renders no configuration ConfigMap")
	return nil
}

// containerArgs maps the first container's --flag[=value] arguments.
func containerArgs(t *testing.T, o *unstructured.Unstructured) map[string]string {
	t.Helper()
	containers, _, err := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if err != nil || len(containers) == 0 {
		t.Fatalf("%s has no containers: %v", o.GetName(), err)
	}
	args := map[string]string{}
	raw, _ := containers[0].(map[string]any)["args"].([]any)
	for _, a := range raw {
		k, v, _ := strings.Cut(fmt.Sprint(a), "=")
		args[k] = v
	}
	return args
}
