package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// RecordName names the AzureAssignedIdentity of a pool: stable, so that
// every assigner replica and NMI find it without a search.
func RecordName(pool nodepool.Pool) string {
	sum := sha256.Sum256([]byte(pool.Key()))
	name := aadv1.IDKey(pool.Name)
	if len(name) > 40 {
		name = name[:40]
	}
	name = strings.Trim(strings.NewReplacer(".", "-", "_", "-").Replace(name), "-")
	return "pool-" + name + "-" + hex.EncodeToString(sum[:])[:12]
}

// AssignmentError says why an assignment record does not vouch for an
// AzureIdentity on a pool; Reason is a stable code.
type AssignmentError struct {
	Reason, Message string
	// Pending is true while the assigner may still get there (no record yet,
	// or one still Assigning): worth waiting for.
	Pending bool
}

func (e *AssignmentError) Error() string { return e.Message }

// Assignment reasons.
const (
	ReasonNotAssigned      = "identity_not_assigned"
	ReasonAssignmentFailed = "identity_assignment_failed"
	ReasonIdentityChanged  = "identity_changed"
	ReasonExternal         = "identity_not_ours"
)

// FailedAssignmentHint is all that a pod's owner learns of a Failed entry,
// in NMI's answers and in the pod's annotation and events. The entry's
// lastError is ARM's answer, which can name another identity's client ID
// and the assigner's principal and scopes: it stays in the record and the
// assigner's log, which namespace users read only if granted.
const FailedAssignmentHint = "ARM refused it or reports another client ID for its resource ID: check the AzureIdentity's spec.clientID and spec.resourceID, and ask a cluster admin for ARM's answer (the assigner's log, the pool's AzureAssignedIdentity)"

// CheckAssignment tells whether entry (nil: none) vouches for id: the
// assigner put id's resource on the pool for this AzureIdentity (not
// External), ARM confirmed the identity there with the client ID the
// AzureIdentity names (Assigned), and the AzureIdentity still names the
// client and resource the record was made for. allowExternal accepts
// identities that were on the pool before the assigner needed them.
func CheckAssignment(rec *aadv1.IdentityAssignment, id *aadv1.AzureIdentity, allowExternal bool) error {
	name := id.Namespace + "/" + id.Name
	switch {
	case rec == nil:
		return &AssignmentError{Reason: ReasonNotAssigned, Pending: true,
			Message: fmt.Sprintf("AzureIdentity %s has not been assigned to this node's pool yet", name)}
	case !SamePairing(rec, id.Spec.ClientID, id.Spec.ResourceID):
		return &AssignmentError{Reason: ReasonIdentityChanged, Pending: true,
			Message: fmt.Sprintf("AzureIdentity %s names a different clientID or resourceID than the one assigned to this node's pool; the assigner is assigning the new one", name)}
	case rec.State == aadv1.StateFailed:
		return &AssignmentError{Reason: ReasonAssignmentFailed,
			Message: fmt.Sprintf("AzureIdentity %s could not be assigned to this node's pool (%s): %s", name, ReasonAssignmentFailed, FailedAssignmentHint)}
	case rec.State != aadv1.StateAssigned:
		return &AssignmentError{Reason: ReasonNotAssigned, Pending: rec.State == "" || rec.State == aadv1.StateAssigning,
			Message: fmt.Sprintf("AzureIdentity %s is not assigned to this node's pool (%s)", name, orNone(string(rec.State)))}
	case rec.External && !allowExternal:
		return &AssignmentError{Reason: ReasonExternal,
			Message: fmt.Sprintf("AzureIdentity %s names an identity that was on this node's pool before the assigner put it there, so nothing ties it to the AzureIdentity; it is served only with policy.serveExternalIdentities: true", name)}
	}
	return nil
}

// SamePairing reports whether the entry was made for the client and resource ID
// an AzureIdentity names now; an edited AzureIdentity's record is re-paired
// by the assigner before NMI serves it again.
func SamePairing(rec *aadv1.IdentityAssignment, clientID, resourceID string) bool {
	return aadv1.SameID(rec.ClientID, clientID) && aadv1.SameID(rec.ResourceID, resourceID)
}

func orNone(s string) string {
	if s == "" {
		return "no status yet"
	}
	return s
}
