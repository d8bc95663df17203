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
		tokens     string
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

func TestIdentityValidatorRefusesProtectedAndOutOfScopeIdentities(t *testing.T) {
	scopes, err := identity.ParseScopes([]string{"team-a=/subscriptions/s/resourceGroups/team-a"})
	if err != nil {
		t.Fatal(err)
	}
	v := crFrontEnd("t", "AzureIdentity", admission.NewDecoder(identity.Scheme()),
		func() *aadv1.AzureIdentity { return &aadv1.AzureIdentity{} },
		IdentityValidator{Protected: identity.NewProtected([]string{"kubelet-client"}), Scopes: scopes})
	request := func(clientID, group string) admission.Request {
		raw, err := json.Marshal(aadv1.AzureIdentity{
			TypeMeta:   metav1.TypeMeta{APIVersion: aadv1.GroupVersion.String(), Kind: "AzureIdentity"},
			ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "mine"},
			Spec:       aadv1.AzureIdentitySpec{ClientID: clientID, ResourceID: "/subscriptions/s/resourceGroups/" + group + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x"},
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
	for _, tc := range []struct {
		name, clientID, group string
		reason, field         string // "": allowed
	}{
		{name: "protected client ID, any case", clientID: "KUBELET-CLIENT", group: "team-a", reason: reasonProtectedIdentity, field: "spec.clientID"},
		{name: "outside the namespace's scopes", clientID: "another-client", group: "team-b", reason: reasonIdentityOutOfScope, field: "spec.resourceID"},
		{name: "in scope", clientID: "another-client", group: "team-a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, reason := v.decide(context.Background(), request(tc.clientID, tc.group))
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
