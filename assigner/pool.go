package assigner

import aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"

// Actual is what ARM reports for a pool's identities.
type Actual struct {
	SystemAssigned bool
	// UserAssigned maps the lower-cased resource IDs on the pool to the
	// client ID ARM reports for each ("" when it reports none).
	UserAssigned map[string]string
}

// Has reports whether the identity with resourceID is on the pool.
func (a Actual) Has(resourceID string) bool {
	_, ok := a.UserAssigned[aadv1.IDKey(resourceID)]
	return ok
}

// ClientID is the client ID ARM reports for the identity on the pool.
func (a Actual) ClientID(resourceID string) string {
	return a.UserAssigned[aadv1.IDKey(resourceID)]
}
