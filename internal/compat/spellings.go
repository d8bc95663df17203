package compat

import (
	"k8s.io/apimachinery/pkg/runtime"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// Spelling is a 1.x spelling of a spec field (Old) and today's (Current).
type Spelling struct {
	Old, Current string
}

// spelled is a spelling and whether an object carries it.
type spelled struct {
	Spelling
	set bool
}

// Spellings lists the 1.x spellings obj's spec carries, sorted by Old;
// none for kinds 1.x spelled as today.
func Spellings(obj runtime.Object) []Spelling {
	switch o := obj.(type) {
	case *aadv1.AzureIdentity:
		s := &o.Spec
		return carried(
			spelled{Spelling{"ClientID", "clientID"}, s.LegacyClientID != ""},
			spelled{Spelling{"ClientId", "clientID"}, s.LegacyClientIDMixed != ""},
			spelled{Spelling{"ClientPassword", "clientPassword"}, s.LegacyClientPassword != nil},
			spelled{Spelling{"ResourceID", "resourceID"}, s.LegacyResourceID != ""},
			spelled{Spelling{"TenantID", "tenantID"}, s.LegacyTenantID != ""},
		)
	case *aadv1.AzureIdentityBinding:
		s := &o.Spec
		return carried(
			spelled{Spelling{"AzureIdentity", "azureIdentity"}, s.LegacyAzureIdentity != ""},
			spelled{Spelling{"Selector", "selector"}, s.LegacySelector != ""},
		)
	}
	return nil
}

func carried(all ...spelled) []Spelling {
	var out []Spelling
	for _, s := range all {
		if s.set {
			out = append(out, s.Spelling)
		}
	}
	return out
}
