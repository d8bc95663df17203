package assigner

import "strings"

// Actual is what ARM reports for a pool's identities.
type Actual struct {
	SystemAssigned bool
	// UserAssigned holds lower-cased resource IDs.
	UserAssigned map[string]bool
}

// Has reports whether the identity with resourceID is on the pool.
func (a Actual) Has(resourceID string) bool { return a.UserAssigned[strings.ToLower(resourceID)] }
