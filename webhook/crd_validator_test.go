package webhook

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

func TestExceptionValidator(t *testing.T) {
	exception := func(ns string) admission.Request {
		e := aadv1.AzurePodIdentityException{
			TypeMeta:   metav1.TypeMeta{APIVersion: aadv1.GroupVersion.String(), Kind: "AzurePodIdentityException"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agents"},
			Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "agent"}},
		}
		raw, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
			Operation: admissionv1.Create, Namespace: ns, Name: "agents",
			Kind:   metav1.GroupVersionKind{Group: aadv1.GroupVersion.Group, Version: "v1", Kind: "AzurePodIdentityException"},
			Object: runtime.RawExtension{Raw: raw},
		}}
	}
	tests := []struct {
		name       string
		namespaces []string
		tokens     config.ExceptionTokens
		req        admission.Request
		want       string
	}{
		{"outside the honoured namespaces", []string{"kube-system"}, "node", exception("team-a"), "has no effect"},
		{"node identity", []string{"kube-system"}, "node", exception("kube-system"), "tokens for the node's own identity"},
		{"every namespace, any identity", []string{"*"}, "any", exception("team-a"), "every identity on their node's pool"},
		{"no tokens", []string{"team-a"}, "none", exception("team-a"), "and no tokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := crFrontEnd("t", "AzurePodIdentityException", admission.NewDecoder(identity.Scheme()),
				func() *aadv1.AzurePodIdentityException { return &aadv1.AzurePodIdentityException{} },
				ExceptionValidator{Namespaces: tt.namespaces, Tokens: tt.tokens})
			resp, reason := v.decide(context.Background(), tt.req)
			if !resp.Allowed || reason != reasonWarned || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], tt.want) {
				t.Fatalf("allowed=%v reason=%s warnings=%q, want a warning containing %q", resp.Allowed, reason, resp.Warnings, tt.want)
			}
		})
	}
}

// identityRequest is the admission request creating AzureIdentity team-a/mine with spec.
func identityRequest(t *testing.T, spec aadv1.AzureIdentitySpec) admission.Request {
	t.Helper()
	raw, err := json.Marshal(aadv1.AzureIdentity{
		TypeMeta:   metav1.TypeMeta{APIVersion: aadv1.GroupVersion.String(), Kind: "AzureIdentity"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "mine"},
		Spec:       spec,
	})
	if err != nil {
		t.Fatal(err)
	}
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		Operation: admissionv1.Create, Namespace: "team-a", Name: "mine",
		Kind:     metav1.GroupVersionKind{Group: aadv1.GroupVersion.Group, Version: "v1", Kind: "AzureIdentity"},
		Resource: metav1.GroupVersionResource{Group: aadv1.GroupVersion.Group, Version: "v1", Resource: "azureidentities"},
		Object:   runtime.RawExtension{Raw: raw},
	}}
}

// userAssigned is the ARM ID of user-assigned identity name in group.
func userAssigned(group, name string) string {
	return "/subscriptions/s/resourceGroups/" + group + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name
}

// identityValidatorCase is an AzureIdentity spec and the denial it gets.
type identityValidatorCase struct {
	name          string
	spec          aadv1.AzureIdentitySpec
	reason, field string // "": allowed
}

func runIdentityValidator(t *testing.T, v IdentityValidator, tests []identityValidatorCase) {
	t.Helper()
	h := crFrontEnd("t", "AzureIdentity", admission.NewDecoder(identity.Scheme()), func() *aadv1.AzureIdentity { return &aadv1.AzureIdentity{} }, v)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, reason := h.decide(context.Background(), identityRequest(t, tc.spec))
			if tc.reason == "" {
				if !resp.Allowed {
					t.Fatalf("refused: %+v", resp.Result)
				}
				return
			}
			if resp.Allowed || reason != tc.reason || resp.Result.Details == nil || resp.Result.Details.Causes[0].Field != tc.field {
				t.Fatalf("allowed=%v reason=%s result=%+v, want a %s denial on %s", resp.Allowed, reason, resp.Result, tc.reason, tc.field)
			}
		})
	}
}

func TestIdentityValidatorRefusesProtectedAndOutOfScopeIdentities(t *testing.T) {
	scopes, err := identity.ParseScopes([]string{"team-a=/subscriptions/s/resourceGroups/team-a"})
	if err != nil {
		t.Fatal(err)
	}
	runIdentityValidator(t, IdentityValidator{Protected: identity.NewProtected([]string{"kubelet-client"}), Scopes: scopes}, []identityValidatorCase{
		{name: "protected client ID, any case", spec: aadv1.AzureIdentitySpec{ClientID: "KUBELET-CLIENT", ResourceID: userAssigned("team-a", "x")},
			reason: reasonProtectedIdentity, field: "spec.clientID"},
		{name: "outside the namespace's scopes", spec: aadv1.AzureIdentitySpec{ClientID: "another-client", ResourceID: userAssigned("team-b", "x")},
			reason: reasonIdentityOutOfScope, field: "spec.resourceID"},
		{name: "in scope", spec: aadv1.AzureIdentitySpec{ClientID: "another-client", ResourceID: userAssigned("team-a", "x")}},
	})
}

// A client or resource ID with a Unicode look-alike of an ASCII letter is
// refused as such, whatever it would match: the protected list (and NMI's
// managed-mode pairing) compare IDs ignoring ASCII case only.
func TestIdentityValidatorRefusesNonASCIIIDs(t *testing.T) {
	kubelet := userAssigned("mc", "kubelet")
	runIdentityValidator(t, IdentityValidator{Protected: identity.NewProtected([]string{"kubelet-client", kubelet})}, []identityValidatorCase{
		{name: "long s (U+017F) for s in the protected resource ID",
			spec:   aadv1.AzureIdentitySpec{ClientID: "another-client", ResourceID: strings.Replace(kubelet, "/subscriptions/", "/\u017fubscriptions/", 1)},
			reason: reasonNonASCIIID, field: "spec.resourceID"},
		{name: "Kelvin sign (U+212A) for k in the protected resource ID",
			spec:   aadv1.AzureIdentitySpec{ClientID: "another-client", ResourceID: userAssigned("mc", "\u212aubelet")},
			reason: reasonNonASCIIID, field: "spec.resourceID"},
		{name: "Kelvin sign in a client ID", spec: aadv1.AzureIdentitySpec{ClientID: "\u212aubelet-client", ResourceID: userAssigned("team-a", "x")},
			reason: reasonNonASCIIID, field: "spec.clientID"},
		{name: "the protected resource ID, ASCII case changed", spec: aadv1.AzureIdentitySpec{ClientID: "another-client", ResourceID: strings.ToUpper(kubelet)},
			reason: reasonProtectedIdentity, field: "spec.resourceID"},
		{name: "ASCII", spec: aadv1.AzureIdentitySpec{ClientID: "another-client", ResourceID: userAssigned("team-a", "x")}},
	})
}

func TestIdentityValidatorWarnsAboutFederation(t *testing.T) {
	tests := []struct {
		name       string
		v          IdentityValidator
		typ        aadv1.IdentityType
		annotation string // "": none
		want       string // a substring of the one warning; "": none
	}{
		{name: "standard identity", v: IdentityValidator{Federation: true}},
		{name: "annotated, federation on", v: IdentityValidator{Federation: true}, annotation: "true", want: "has a federated credential for the cluster's issuer, subject system:serviceaccount:team-a:"},
		{name: "mode federated, not annotated", v: IdentityValidator{AllFederated: true, Federation: true}, want: "audience api://AzureADTokenExchange"},
		{name: "annotated, federation off", annotation: "true", want: "until the chart's policy.federation.enabled is true"},
		{name: "annotated false", v: IdentityValidator{Federation: true}, annotation: "false"},
		{name: "annotated with another word", v: IdentityValidator{Federation: true}, annotation: "yes", want: `"yes" is neither "true" nor "false"`},
		{name: "a service principal", v: IdentityValidator{Federation: true}, typ: aadv1.ServicePrincipal, annotation: "true", want: "only user-assigned identities (type 0) are federated"},
		{name: "a service principal in mode federated", v: IdentityValidator{AllFederated: true, Federation: true}, typ: aadv1.ServicePrincipal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "mine"},
				Spec: aadv1.AzureIdentitySpec{Type: tt.typ, ClientID: "c"}}
			if tt.annotation != "" {
				id.Annotations = map[string]string{aadv1.AnnotationFederated: tt.annotation}
			}
			got := tt.v.federationWarnings(id)
			switch {
			case tt.want == "" && len(got) > 0:
				t.Fatalf("warnings %q, want none", got)
			case tt.want != "" && (len(got) != 1 || !strings.Contains(got[0], tt.want)):
				t.Fatalf("warnings %q, want one containing %q", got, tt.want)
			}
		})
	}
}
