package webhook

import (
	"context"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/objects"
)

// BenchmarkMutatePod is the mutating handler's own cost per review, without
// TLS and HTTP (hack/loadgen measures those end to end).
func BenchmarkMutatePod(b *testing.B) {
	id := objects.AzureIdentity("default", "demo", aadv1.UserAssignedMSI, "c-demo")
	bind := objects.Binding("default", "demo-binding", "demo", "demo")
	m := podFrontEnd("mutate-pod", admission.NewDecoder(identity.Scheme()), &PodMutator{Resolver: newResolver(b, &id, &bind), Gate: true})
	req := podRequest(b, admissionv1.Create, labelled("demo"), nil, "alice")
	b.ReportAllocs()
	for b.Loop() {
		if resp, _ := m.decide(context.Background(), req); !resp.Allowed {
			b.Fatal(resp.Result)
		}
	}
}
