package assigner

import (
	"fmt"
	"strings"
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
