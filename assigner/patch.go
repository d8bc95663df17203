package assigner

import aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"

// MaxIdentitiesPerRequest is the most user-assigned identities ARM accepts
// in one VMSS or VM request.
const MaxIdentitiesPerRequest = 150

// Identity type strings, as ARM spells them.
const (
	TypeNone                       = "None"
	TypeSystemAssigned             = "SystemAssigned"
	TypeUserAssigned               = "UserAssigned"
	TypeSystemAssignedUserAssigned = "SystemAssigned, UserAssigned"
)

// Patch is one ARM request's identity delta: Add are sent as `{}`, Remove
// as `null`, and Type is the pool's identity type after the request.
type Patch struct {
	Type   string
	Add    []string
	Remove []string
}

// Patches turns desired additions and removals into ARM requests of at most
// MaxIdentitiesPerRequest identities each. Entries that are already true
// are dropped; additions go first so a pool does not lose its user-assigned
// type in between. Every request keeps the system-assigned identity and
// every identity it does not name.
func Patches(actual Actual, add, remove []string) []Patch {
	user := make(map[string]bool, len(actual.UserAssigned))
	for id := range actual.UserAssigned {
		user[aadv1.IDKey(id)] = true
	}
	type change struct {
		id  string
		add bool
	}
	var changes []change
	seen := map[string]bool{}
	for _, id := range add {
		if k := aadv1.IDKey(id); !user[k] && !seen[k] {
			seen[k] = true
			changes = append(changes, change{id, true})
		}
	}
	for _, id := range remove {
		if k := aadv1.IDKey(id); user[k] && !seen[k] {
			seen[k] = true
			changes = append(changes, change{id, false})
		}
	}
	var patches []Patch
	for len(changes) > 0 {
		n := min(len(changes), MaxIdentitiesPerRequest)
		var p Patch
		for _, c := range changes[:n] {
			if c.add {
				p.Add = append(p.Add, c.id)
				user[aadv1.IDKey(c.id)] = true
			} else {
				p.Remove = append(p.Remove, c.id)
				delete(user, aadv1.IDKey(c.id))
			}
		}
		p.Type = identityType(actual.SystemAssigned, len(user) > 0)
		patches = append(patches, p)
		changes = changes[n:]
	}
	return patches
}

func identityType(system, user bool) string {
	switch {
	case system && user:
		return TypeSystemAssignedUserAssigned
	case system:
		return TypeSystemAssigned
	case user:
		return TypeUserAssigned
	default:
		return TypeNone
	}
}
