package identity

import (
	"testing"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

func TestProtected(t *testing.T) {
	p := NewProtected([]string{" KUBELET-CLIENT ", "/subscriptions/S/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kubelet", ""})
	tests := []struct {
		name string
		spec aadv1.AzureIdentitySpec
		want string
	}{
		{"client ID, any case", aadv1.AzureIdentitySpec{ClientID: "kubelet-client"}, "clientID"},
		{"resource ID, any case", aadv1.AzureIdentitySpec{ClientID: "other", ResourceID: "/subscriptions/s/resourcegroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/KUBELET"}, "resourceID"},
		{"another identity", aadv1.AzureIdentitySpec{ClientID: "other", ResourceID: "/x"}, ""},
		// Unicode look-alikes are other strings: not this identity (the webhook and the CRD refuse them).
		{"resource ID with a Kelvin sign (U+212A) for k", aadv1.AzureIdentitySpec{ClientID: "other", ResourceID: "/subscriptions/S/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/\u212aubelet"}, ""},
		{"client ID with a Kelvin sign", aadv1.AzureIdentitySpec{ClientID: "\u212aUBELET-CLIENT"}, ""},
		{"empty fields match nothing", aadv1.AzureIdentitySpec{}, ""},
	}
	for _, tt := range tests {
		if got := p.Named(&aadv1.AzureIdentity{Spec: tt.spec}); got != tt.want {
			t.Errorf("%s: Named = %q, want %q", tt.name, got, tt.want)
		}
	}
}
