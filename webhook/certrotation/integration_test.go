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

// The rotator fills the Secret with a CA and a serving certificate for the
// Service's DNS names, and injects that CA into both webhook configurations.
func TestCertRotationIssuesAndInjects(t *testing.T) {
	_, cfg := framework.StartEnvironment(t, framework.Options{})
	k8s, err := client.New(cfg, client.Options{Scheme: identity.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	const cfgName = "aadpi-chart-cert-rotation"
	ctx, cancel := context.WithCancel(context.Background())
	// The rotator only needs the configurations to exist; they match no
	// namespace.
	never := &metav1.LabelSelector{MatchLabels: map[string]string{"aadpi-chart-cert-rotation": "never"}}
	url, none := "https://127.0.0.1:1/never", admissionregistrationv1.SideEffectClassNone
	cc := admissionregistrationv1.WebhookClientConfig{URL: &url}
	mutating := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: cfgName},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "m.aadpi-chart.test", ClientConfig: cc, NamespaceSelector: never,
			SideEffects: &none, AdmissionReviewVersions: []string{"v1"}}}}
	validating := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: cfgName},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "v.aadpi-chart.test", ClientConfig: cc, NamespaceSelector: never,
			SideEffects: &none, AdmissionReviewVersions: []string{"v1"}}}}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "aadpi-chart-cert"}}
	for _, o := range []client.Object{mutating, validating, secret} {
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
		Secret:      types.NamespacedName{Namespace: "default", Name: secret.Name},
		ServiceName: "aadpi-chart-webhook", WebhookConfigurationName: cfgName,
		CertDir: t.TempDir(), CertName: "tls.crt", KeyName: "tls.key",
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

	var caPEM []byte
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(secret), secret); err != nil {
			return false, err
		}
		caPEM = secret.Data["ca.crt"]
		if len(caPEM) == 0 || len(secret.Data["tls.crt"]) == 0 {
			return false, nil
		}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(mutating), mutating); err != nil {
			return false, err
		}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(validating), validating); err != nil {
			return false, err
		}
		return bytes.Equal(mutating.Webhooks[0].ClientConfig.CABundle, caPEM) && bytes.Equal(validating.Webhooks[0].ClientConfig.CABundle, caPEM), nil
	})
	if err != nil {
		t.Fatalf("waiting for the certificate and its injection: %v", err)
	}

	block, _ := pem.Decode(secret.Data["tls.crt"])
	if block == nil {
		t.Fatal("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	for _, name := range []string{"aadpi-chart-webhook.default.svc", "aadpi-chart-webhook.default.svc.cluster.local"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("serving certificate does not verify for %s: %v", name, err)
		}
	}
}
