// Package assigner puts the user-assigned identities of pods on the node
// pools (VMSS or standalone VMs) they may run on, through Azure Resource
// Manager, before it lifts the pods' scheduling gate.
package assigner

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

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

// PoolKind is the ARM resource type of a pool.
type PoolKind string

// Pool kinds.
const (
	KindVMSS PoolKind = "virtualMachineScaleSets"
	KindVM   PoolKind = "virtualMachines"
)

// Pool is a VMSS or standalone VM, the unit identities are assigned to.
type Pool struct {
	Subscription, ResourceGroup string
	Kind                        PoolKind
	Name                        string
}

// ID is the pool's ARM ID.
func (p Pool) ID() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/%s/%s", p.Subscription, p.ResourceGroup, p.Kind, p.Name)
}

// Key is the lower-cased ARM ID: ARM IDs compare case-insensitively.
func (p Pool) Key() string { return strings.ToLower(p.ID()) }

// ParsePoolID parses a VMSS or VM ARM ID.
func ParsePoolID(id string) (Pool, error) {
	parts := strings.Split(strings.Trim(id, "/"), "/")
	if len(parts) != 8 || !strings.EqualFold(parts[0], "subscriptions") || !strings.EqualFold(parts[2], "resourceGroups") ||
		!strings.EqualFold(parts[4], "providers") || !strings.EqualFold(parts[5], "Microsoft.Compute") {
		return Pool{}, fmt.Errorf("%q is not a VMSS or VM ARM ID", id)
	}
	p := Pool{Subscription: parts[1], ResourceGroup: parts[3], Name: parts[7]}
	switch {
	case strings.EqualFold(parts[6], string(KindVMSS)):
		p.Kind = KindVMSS
	case strings.EqualFold(parts[6], string(KindVM)):
		p.Kind = KindVM
	default:
		return Pool{}, fmt.Errorf("%q is neither a VMSS nor a VM", id)
	}
	if p.Subscription == "" || p.ResourceGroup == "" || p.Name == "" {
		return Pool{}, fmt.Errorf("%q has an empty segment", id)
	}
	return p, nil
}

// PoolFromProviderID returns the pool behind a Node's spec.providerID:
// azure:///subscriptions/…/virtualMachineScaleSets/<name>/virtualMachines/<id>
// or azure:///subscriptions/…/virtualMachines/<name>.
func PoolFromProviderID(providerID string) (Pool, error) {
	rest, ok := strings.CutPrefix(providerID, "azure://")
	if !ok {
		return Pool{}, fmt.Errorf("providerID %q is not an Azure one", providerID)
	}
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	if len(parts) == 10 && strings.EqualFold(parts[6], string(KindVMSS)) && strings.EqualFold(parts[8], string(KindVM)) {
		parts = parts[:8]
	}
	p, err := ParsePoolID("/" + strings.Join(parts, "/"))
	if err != nil {
		return Pool{}, fmt.Errorf("providerID %q: %w", providerID, err)
	}
	return p, nil
}

// Actual is what ARM reports for a pool's identities.
type Actual struct {
	SystemAssigned bool
	// UserAssigned holds lower-cased resource IDs.
	UserAssigned map[string]bool
}

// Has reports whether the identity with resourceID is on the pool.
func (a Actual) Has(resourceID string) bool { return a.UserAssigned[strings.ToLower(resourceID)] }

// Patch is one ARM request's identity delta: Add are sent as `{}`, Remove
// as `null`, and Type is the pool's identity type after the request.
type Patch struct {
	Type   string
	Add    []string
	Remove []string
}

// Plan turns desired additions and removals into ARM requests of at most
// MaxIdentitiesPerRequest identities each. Entries that are already true
// are dropped; additions go first so a pool does not lose its user-assigned
// type in between. Every request keeps the system-assigned identity and
// every identity it does not name.
func Plan(actual Actual, add, remove []string) []Patch {
	user := make(map[string]bool, len(actual.UserAssigned))
	for id := range actual.UserAssigned {
		user[strings.ToLower(id)] = true
	}
	type change struct {
		id  string
		add bool
	}
	var changes []change
	seen := map[string]bool{}
	for _, id := range add {
		if k := strings.ToLower(id); !user[k] && !seen[k] {
			seen[k] = true
			changes = append(changes, change{id, true})
		}
	}
	for _, id := range remove {
		if k := strings.ToLower(id); user[k] && !seen[k] {
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
				user[strings.ToLower(c.id)] = true
			} else {
				p.Remove = append(p.Remove, c.id)
				delete(user, strings.ToLower(c.id))
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

// RecordName names the AzureAssignedIdentity of one AzureIdentity on one
// pool: stable, so that any replica finds it.
func RecordName(id types.NamespacedName, pool Pool) string {
	identityKey := id.String()
	sum := sha256.Sum256([]byte(identityKey + "|" + pool.Key()))
	name := strings.ToLower(strings.NewReplacer("/", "-", ".", "-").Replace(identityKey))
	if len(name) > 40 {
		name = name[:40]
	}
	return strings.Trim(name, "-") + "-" + hex.EncodeToString(sum[:])[:12]
}
