package v1

import "testing"

// IDs compare ignoring ASCII case only: Unicode look-alikes that strings.EqualFold
// or strings.ToLower would make equal stay different.
func TestSameID(t *testing.T) {
	const rid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kubelet"
	tests := []struct {
		name string
		a, b string
		want bool
	}{
		{"identical", rid, rid, true},
		{"ASCII case", rid, "/SUBSCRIPTIONS/S/resourcegroups/RG/providers/microsoft.managedidentity/userassignedidentities/KUBELET", true},
		{"long s (U+017F) for s", rid, "/ſubscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kubelet", false},
		{"Kelvin sign (U+212A) for k", rid, "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/\u212aubelet", false},
		{"Kelvin sign for K", "\u212a", "K", false},
		{"a non-ASCII ID equals itself", "/ſubscriptions/x", "/ſubscriptions/X", true},
		{"prefix", rid, rid + "x", false},
		{"empty", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SameID(tt.a, tt.b); got != tt.want {
				t.Errorf("SameID(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
			if got := IDKey(tt.a) == IDKey(tt.b); got != tt.want {
				t.Errorf("IDKey(%q) == IDKey(%q) is %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}
