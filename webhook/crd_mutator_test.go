package webhook

import (
	"context"
	"encoding/json"
	"testing"

	evanjsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// The 1.x spellings are stored under the canonical fields and removed, the
// canonical value winning when both are set, with a warning per spelling.
func TestSpellingMutator(t *testing.T) {
	decoder := admission.NewDecoder(identity.Scheme())
	identities := crFrontEnd("t", "AzureIdentity", decoder, func() *aadv1.AzureIdentity { return &aadv1.AzureIdentity{} },
		SpellingMutator[*aadv1.AzureIdentity]{})
	bindings := crFrontEnd("t", "AzureIdentityBinding", decoder, func() *aadv1.AzureIdentityBinding { return &aadv1.AzureIdentityBinding{} },
		SpellingMutator[*aadv1.AzureIdentityBinding]{})
	tests := []struct {
		name     string
		decide   func(context.Context, admission.Request) (admission.Response, string)
		kind     string
		spec     string // the object's spec as sent
		want     string // the spec stored; "": unchanged
		warnings int
	}{
		{name: "1.x spellings only", decide: identities.decide, kind: "AzureIdentity",
			spec: `{"type":0,"ResourceID":"/r","ClientID":"c","TenantID":"t","ClientPassword":{"name":"s"}}`,
			want: `{"type":0,"resourceID":"/r","clientID":"c","tenantID":"t","clientPassword":{"name":"s"}}`, warnings: 4},
		{name: "both spellings: the canonical one wins", decide: identities.decide, kind: "AzureIdentity",
			spec: `{"type":0,"resourceID":"/new","ResourceID":"/old","ClientId":"c"}`,
			want: `{"type":0,"resourceID":"/new","clientID":"c"}`, warnings: 2},
		{name: "ClientID and ClientId", decide: identities.decide, kind: "AzureIdentity",
			spec: `{"type":0,"resourceID":"/r","ClientID":"c1","ClientId":"c2"}`,
			want: `{"type":0,"resourceID":"/r","clientID":"c1"}`, warnings: 2},
		{name: "canonical identity", decide: identities.decide, kind: "AzureIdentity", spec: `{"type":0,"resourceID":"/r","clientID":"c"}`},
		{name: "binding", decide: bindings.decide, kind: "AzureIdentityBinding",
			spec: `{"AzureIdentity":"demo","Selector":"demo","weight":1}`,
			want: `{"azureIdentity":"demo","selector":"demo","weight":1}`, warnings: 2},
		{name: "canonical binding", decide: bindings.decide, kind: "AzureIdentityBinding", spec: `{"azureIdentity":"demo","selector":"demo"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := []byte(`{"apiVersion":"aadpodidentity.k8s.io/v1","kind":"` + tt.kind + `","metadata":{"namespace":"ns","name":"x"},"spec":` + tt.spec + `}`)
			resp, reason := tt.decide(context.Background(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
				Operation: admissionv1.Create, Namespace: "ns", Name: "x",
				Kind:   metav1.GroupVersionKind{Group: aadv1.GroupVersion.Group, Version: "v1", Kind: tt.kind},
				Object: runtime.RawExtension{Raw: obj},
			}})
			if !resp.Allowed {
				t.Fatalf("refused: %+v", resp.Result)
			}
			if tt.want == "" {
				if len(resp.Patches) > 0 || len(resp.Warnings) > 0 || reason != reasonUnchanged {
					t.Fatalf("patches %v, warnings %q, reason %s: want none, unchanged", resp.Patches, resp.Warnings, reason)
				}
				return
			}
			ops, err := json.Marshal(resp.Patches)
			if err != nil {
				t.Fatal(err)
			}
			patch, err := evanjsonpatch.DecodePatch(ops)
			if err != nil {
				t.Fatal(err)
			}
			patched, err := patch.Apply(obj)
			if err != nil {
				t.Fatalf("applying %s: %v", ops, err)
			}
			var got, want struct{ Spec map[string]any }
			if err := json.Unmarshal(patched, &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(`{"spec":`+tt.want+`}`), &want); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(want.Spec, got.Spec); d != "" {
				t.Errorf("stored spec (-want +got):\n%s", d)
			}
			if len(resp.Warnings) != tt.warnings || reason != reasonLegacySpelling {
				t.Errorf("warnings %q, reason %s: want %d, %s", resp.Warnings, reason, tt.warnings, reasonLegacySpelling)
			}
		})
	}
}
