package identity

import (
	"strings"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// Protected are the cluster's own identities (the kubelet's, the
// assigner's, the immutable ones), by client or resource ID: no
// AzureIdentity may name them, since whoever creates one would otherwise
// get their tokens.
type Protected map[string]bool

// NewProtected builds the set from client and resource IDs; ARM and Azure
// AD compare both case-insensitively.
func NewProtected(ids []string) Protected {
	p := Protected{}
	for _, id := range ids {
		if id = strings.TrimSpace(id); id != "" {
			p[aadv1.IDKey(id)] = true
		}
	}
	return p
}

// Named returns the field of id ("clientID" or "resourceID") that names a
// protected identity, or "".
func (p Protected) Named(id *aadv1.AzureIdentity) string {
	switch {
	case id.Spec.ClientID != "" && p[aadv1.IDKey(id.Spec.ClientID)]:
		return "clientID"
	case id.Spec.ResourceID != "" && p[aadv1.IDKey(id.Spec.ResourceID)]:
		return "resourceID"
	}
	return ""
}
