//go:build integration

package certrotation

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

const cfgName = "aadpi-chart-cert-rotation"

// rotation is a running rotator with its configurations and Secret.
type rotation struct {
	k8s        client.Client
	mutating   *admissionregistrationv1.MutatingWebhookConfiguration
	validating *admissionregistrationv1.ValidatingWebhookConfiguration
	secret     *corev1.Secret
	ctx        context.Context
}

// startRotation creates both configurations with the given caBundles and
// annotations and an empty Secret, and runs the rotator until the test ends.
func startRotation(t *testing.T, overlap time.Duration, mutatingBundle, validatingBundle []byte, mutatingAnnotations map[string]string) *rotation {
	t.Helper()
	_, cfg := framework.StartEnvironment(t, framework.Options{})
	k8s, err := client.New(cfg, client.Options{Scheme: identity.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// The rotator only needs the configurations to exist; they match no
	// namespace.
	never := &metav1.LabelSelector{MatchLabels: map[string]string{"aadpi-chart-cert-rotation": "never"}}
	url, none := "https://127.0.0.1:1/never", admissionregistrationv1.SideEffectClassNone
	cc := func(bundle []byte) admissionregistrationv1.WebhookClientConfig {
		return admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: bundle}
	}
	r := &rotation{k8s: k8s, ctx: ctx,
		mutating: &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: cfgName, Annotations: mutatingAnnotations},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "m.aadpi-chart.test", ClientConfig: cc(mutatingBundle), NamespaceSelector: never,
				SideEffects: &none, AdmissionReviewVersions: []string{"v1"}}}},
		validating: &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: cfgName},
			Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "v.aadpi-chart.test", ClientConfig: cc(validatingBundle), NamespaceSelector: never,
				SideEffects: &none, AdmissionReviewVersions: []string{"v1"}}}},
		secret: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "aadpi-chart-cert"}},
	}
	for _, o := range []client.Object{r.mutating, r.validating, r.secret} {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatalf("creating %T: %v", o, err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), o) })
	}

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: identity.Scheme(), Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	err = Add(mgr, Config{
		Secret:      types.NamespacedName{Namespace: "default", Name: r.secret.Name},
		ServiceName: "aadpi-chart-webhook", WebhookConfigurationName: cfgName,
		CertDir: t.TempDir(), CertName: "tls.crt", KeyName: "tls.key", Overlap: overlap,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	return r
}

// wait polls until the Secret holds a CA and cond holds for the two
// configurations' bundles, and returns the CA.
func (r *rotation) wait(t *testing.T, what string, cond func(ca, mutating, validating []byte) bool) []byte {
	t.Helper()
	var ca []byte
	err := wait.PollUntilContextTimeout(r.ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, o := range []client.Object{r.secret, r.mutating, r.validating} {
			if err := r.k8s.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
				return false, err
			}
		}
		ca = r.secret.Data["ca.crt"]
		if len(ca) == 0 || len(r.secret.Data["tls.crt"]) == 0 {
			return false, nil
		}
		return cond(ca, r.mutating.Webhooks[0].ClientConfig.CABundle, r.validating.Webhooks[0].ClientConfig.CABundle), nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
	return ca
}

// The rotator fills the Secret with a CA and a serving certificate for the
// Service's DNS names and injects the CA into the webhook configurations.
// As after a switch from cert-manager, the CA trusted before stays beside it
// for the overlap, so that webhook pods still serving the previous
// certificate keep answering, and is dropped after it; a configuration
// cainjector still owns is left alone until its annotation goes.
func TestCertRotationIssuesAndInjects(t *testing.T) {
	const overlap = 5 * time.Second
	year := time.Now().AddDate(1, 0, 0)
	previous, certManagers := testCA(t, "previous", year), testCA(t, "cert-manager", year)
	r := startRotation(t, overlap, certManagers, previous, map[string]string{certManagerInjectFrom: "default/aadpi-chart-webhook"})

	ca := r.wait(t, "the CA beside the previous one", func(ca, _, validating []byte) bool {
		return bytes.Equal(validating, join(ca, previous))
	})
	verifyServing(t, r.secret.Data["tls.crt"], ca)
	injectedAt, err := time.Parse(time.RFC3339, r.validating.Annotations[AnnotationCAInjectedAt])
	if err != nil {
		t.Fatalf("%s annotation: %v", AnnotationCAInjectedAt, err)
	}
	r.wait(t, "the previous CA dropped after the overlap", func(_, _, validating []byte) bool {
		return bytes.Equal(validating, ca)
	})
	if since := time.Since(injectedAt); since < overlap-time.Second {
		t.Errorf("the previous CA was dropped %s after the injection, before the overlap of %s", since, overlap)
	}
	if got := r.mutating.Webhooks[0].ClientConfig.CABundle; !bytes.Equal(got, certManagers) {
		t.Errorf("the configuration cainjector owns was changed to %d bytes", len(got))
	}

	// helm upgrade removes cert-manager's annotation.
	delete(r.mutating.Annotations, certManagerInjectFrom)
	if err := r.k8s.Update(r.ctx, r.mutating); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "the CA beside cert-manager's", func(ca, mutating, _ []byte) bool {
		return bytes.Equal(mutating, join(ca, certManagers))
	})
	r.wait(t, "cert-manager's CA dropped after the overlap", func(ca, mutating, _ []byte) bool {
		return bytes.Equal(mutating, ca)
	})
}

// verifyServing checks the serving certificate chains to ca for both of the
// Service's DNS names.
func verifyServing(t *testing.T, certPEM, ca []byte) {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	for _, name := range []string{"aadpi-chart-webhook.default.svc", "aadpi-chart-webhook.default.svc.cluster.local"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("serving certificate does not verify for %s: %v", name, err)
		}
	}
}
