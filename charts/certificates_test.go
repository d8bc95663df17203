//go:build integration

package charts

import (
	"fmt"
	"slices"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestCertManagerObjectsFitTheWebhook: with cert-manager, the serving
// Certificate names the webhook Service, its Secret is the one the webhook
// mounts, its issuer is the chart's CA Issuer (or the user's), and both
// webhook configurations ask cainjector for that Certificate's CA.
func TestCertManagerObjectsFitTheWebhook(t *testing.T) {
	for _, c := range []struct {
		values     string
		wantIssuer string
	}{
		{"default", cmapi.IssuerKind},
		{"custom-issuer", cmapi.ClusterIssuerKind},
	} {
		t.Run(c.values, func(t *testing.T) {
			out, err := render(goldenRelease, goldenNamespace, valuesFile(c.values))
			if err != nil {
				t.Fatal(err)
			}
			objs, err := objects(out)
			if err != nil {
				t.Fatal(err)
			}
			var (
				certs    = map[string]*cmapi.Certificate{}
				issuers  = map[string]*cmapi.Issuer{}
				services []string
				deploy   appsv1.Deployment
				injected []string
			)
			for _, o := range objs {
				switch o.GetKind() {
				case "Certificate":
					certs[o.GetName()] = typed(t, o, &cmapi.Certificate{})
				case "Issuer":
					issuers[o.GetName()] = typed(t, o, &cmapi.Issuer{})
				case "Service":
					services = append(services, fmt.Sprintf("%s.%s.svc", o.GetName(), o.GetNamespace()))
				case "Deployment":
					if o.GetLabels()["app.kubernetes.io/component"] == "webhook" {
						typed(t, o, &deploy)
					}
				case "MutatingWebhookConfiguration":
					injected = append(injected, o.GetAnnotations()["cert-manager.io/inject-ca-from"])
					typed(t, o, &admissionregistrationv1.MutatingWebhookConfiguration{})
				case "ValidatingWebhookConfiguration":
					injected = append(injected, o.GetAnnotations()["cert-manager.io/inject-ca-from"])
					typed(t, o, &admissionregistrationv1.ValidatingWebhookConfiguration{})
				}
			}
			serving := certs[goldenRelease+"-webhook"]
			if serving == nil {
				t.Fatalf("no serving Certificate %s-webhook among %d Certificates", goldenRelease, len(certs))
			}
			if !slices.ContainsFunc(serving.Spec.DNSNames, func(n string) bool { return slices.Contains(services, n) }) {
				t.Errorf("serving Certificate names %v, no Service of the chart (%v)", serving.Spec.DNSNames, services)
			}
			if v := webhookCertVolume(deploy); v == nil || v.Secret.SecretName != serving.Spec.SecretName {
				t.Errorf("the webhook mounts %+v, the Certificate writes Secret %s", v, serving.Spec.SecretName)
			}
			if serving.Spec.IssuerRef.Kind != c.wantIssuer {
				t.Errorf("serving Certificate issued by a %s, want %s", serving.Spec.IssuerRef.Kind, c.wantIssuer)
			}
			if c.wantIssuer == cmapi.IssuerKind {
				ca := issuers[serving.Spec.IssuerRef.Name]
				if ca == nil || ca.Spec.CA == nil || certs[serving.Spec.IssuerRef.Name] == nil || !certs[serving.Spec.IssuerRef.Name].Spec.IsCA ||
					certs[serving.Spec.IssuerRef.Name].Spec.SecretName != ca.Spec.CA.SecretName {
					t.Errorf("the serving Certificate's issuer %s is not a CA Issuer signing from the chart's CA Certificate", serving.Spec.IssuerRef.Name)
				}
			}
			want := goldenNamespace + "/" + serving.Name
			if len(injected) != 2 || injected[0] != want || injected[1] != want {
				t.Errorf("webhook configurations inject from %q, want %s in both", injected, want)
			}
		})
	}
}

// typed converts a rendered object into its Go type, failing on fields the
// type does not know.
func typed[T any](t *testing.T, o *unstructured.Unstructured, into *T) *T {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return into
}

func webhookCertVolume(d appsv1.Deployment) *corev1.Volume {
	for i, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Name == "certs" {
			return &d.Spec.Template.Spec.Volumes[i]
		}
	}
	return nil
}
