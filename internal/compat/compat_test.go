package compat_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/compat"
	v18 "github.com/aad-pod-identity/aad-pod-identity/internal/testing/v18"
)

// decode decodes an object as every component does (the apimachinery
// codec, case-sensitive).
func decode(t *testing.T, doc string) runtime.Object {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := aadv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	obj, _, err := serializer.NewCodecFactory(scheme).UniversalDeserializer().Decode([]byte(doc), nil, nil)
	if err != nil {
		t.Fatalf("decoding %s: %v", doc, err)
	}
	return obj
}

// object is an object sys/x of kind with annotations (a JSON object) and
// its spec and status (`"spec":...`), as stored.
func object(kind, annotations, body string) string {
	return `{"apiVersion":"aadpodidentity.k8s.io/v1","kind":"` + kind + `","metadata":{"namespace":"sys","name":"x","annotations":` + annotations + `}` + body + `}`
}

func TestSpellings(t *testing.T) {
	tests := []struct {
		name, doc string
		want      []compat.Spelling
	}{
		{"identity, today's spellings", object("AzureIdentity", `{}`, `,"spec":{"resourceID":"/r","clientID":"c"}`), nil},
		{"identity, 1.x's", object("AzureIdentity", `{}`, `,"spec":{"type":1,"ResourceID":"/r","ClientId":"c","ClientID":"c","TenantID":"t","ClientPassword":{"name":"s"}}`),
			[]compat.Spelling{{"ClientID", "clientID"}, {"ClientId", "clientID"}, {"ClientPassword", "clientPassword"}, {"ResourceID", "resourceID"}, {"TenantID", "tenantID"}}},
		{"identity, both", object("AzureIdentity", `{}`, `,"spec":{"resourceID":"/new","ResourceID":"/old"}`), []compat.Spelling{{"ResourceID", "resourceID"}}},
		{"binding, today's spellings", object("AzureIdentityBinding", `{}`, `,"spec":{"azureIdentity":"id","selector":"sel"}`), nil},
		{"binding, 1.x's", object("AzureIdentityBinding", `{}`, `,"spec":{"AzureIdentity":"id","Selector":"sel"}`),
			[]compat.Spelling{{"AzureIdentity", "azureIdentity"}, {"Selector", "selector"}}},
		{"another kind", object("AzurePodIdentityException", `{}`, `,"spec":{"podLabels":{"app":"x"}}`), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, compat.Spellings(decode(t, tt.doc))); d != "" {
				t.Errorf("spellings (-want +got):\n%s", d)
			}
		})
	}
}

// The records as each release stored them: 1.8's as its MIC wrote it, 0.1's
// with its annotation, and today's pool record.
func TestRecords(t *testing.T) {
	w := v18.World{Namespace: "default", Identity: "demo", Selector: "demo", Pod: "demo", Node: "n1",
		ResourceID: "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/demo", ClientID: "c"}
	var mic string
	for doc := range strings.SplitSeq(w.Objects(), "\n---\n") {
		if strings.Contains(doc, "kind: AzureAssignedIdentity") {
			mic = doc
		}
	}
	since := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	pool := `"spec":{"nodePool":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachineScaleSets/p"`
	tests := []struct {
		name, doc string
		want1x    *compat.Record1x
		want01    *aadv1.IdentityAssignment
	}{
		{name: "1.8's, as its MIC wrote it", doc: mic, want1x: &compat.Record1x{
			Pod: types.NamespacedName{Namespace: "default", Name: "demo"}, Node: "n1",
			Identity: types.NamespacedName{Namespace: "default", Name: "demo"}, ResourceID: w.ResourceID, State: aadv1.StateAssigned}},
		{name: "1.x's, pruned to nothing", doc: object("AzureAssignedIdentity", `{}`, ``), want1x: &compat.Record1x{}},
		{name: "0.1's", doc: object("AzureAssignedIdentity", `{"aadpodidentity.k8s.io/unneeded-since":"`+since.Format(time.RFC3339Nano)+`"}`, `,`+pool+
			`,"azureIdentityRef":{"namespace":"ns","name":"id"},"clientID":"c","resourceID":"/r"},"status":{"status":"Failed","lastError":"refused","external":true}`),
			want01: &aadv1.IdentityAssignment{AzureIdentityRef: aadv1.IdentityReference{Namespace: "ns", Name: "id"}, ClientID: "c", ResourceID: "/r",
				State: aadv1.StateFailed, LastError: "refused", External: true, UnneededSince: &metav1.MicroTime{Time: since}, AdoptedFrom: "sys/x"}},
		{name: "0.1's, still needed", doc: object("AzureAssignedIdentity", `{}`, `,`+pool+`,"azureIdentityRef":{"namespace":"ns","name":"id"},"clientID":"c","resourceID":"/r"},"status":{"status":"Assigned"}`),
			want01: &aadv1.IdentityAssignment{AzureIdentityRef: aadv1.IdentityReference{Namespace: "ns", Name: "id"}, ClientID: "c", ResourceID: "/r",
				State: aadv1.StateAssigned, AdoptedFrom: "sys/x"}},
		{name: "today's pool record", doc: object("AzureAssignedIdentity", `{}`, `,`+pool+`},"status":{"identities":[{"azureIdentityRef":{"namespace":"ns","name":"id"},"clientID":"c","resourceID":"/r","state":"Assigned"}]}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := decode(t, tt.doc).(*aadv1.AzureAssignedIdentity)
			if r, ok := compat.Read1x(rec); ok != (tt.want1x != nil) || (ok && r != *tt.want1x) {
				t.Errorf("Read1x = %+v, %v; want %+v", r, ok, tt.want1x)
			}
			e, ok := compat.Read01(rec)
			if ok != (tt.want01 != nil) {
				t.Fatalf("Read01 = %+v, %v; want %+v", e, ok, tt.want01)
			}
			if d := cmp.Diff(tt.want01, e); d != "" {
				t.Errorf("Read01 (-want +got):\n%s", d)
			}
		})
	}
}
