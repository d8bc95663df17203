// Package nodepool names the unit identities are assigned to: a VMSS or a
// standalone VM, read from ARM IDs and from Nodes' provider IDs. The
// assigner writes identities to pools; NMI checks that its node's pool is
// the one an assignment was recorded for.
package nodepool

import (
	"fmt"
	"strings"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// Kind is the ARM resource type of a pool.
type Kind string

// Pool kinds.
const (
	KindVMSS Kind = "virtualMachineScaleSets"
	KindVM   Kind = "virtualMachines"
)

// Pool is a VMSS or standalone VM, the unit identities are assigned to.
type Pool struct {
	Subscription, ResourceGroup string
	Kind                        Kind
	Name                        string
}

// ID is the pool's ARM ID.
func (p Pool) ID() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/%s/%s", p.Subscription, p.ResourceGroup, p.Kind, p.Name)
}

// JoinIDs is the pools' ARM IDs, comma-separated: the node-pools
// annotation of a pod.
func JoinIDs(pools []Pool) string {
	ids := make([]string, 0, len(pools))
	for _, p := range pools {
		ids = append(ids, p.ID())
	}
	return strings.Join(ids, ",")
}

// Key is the lower-cased ARM ID: ARM IDs compare case-insensitively.
func (p Pool) Key() string { return aadv1.IDKey(p.ID()) }

// ParseID parses a VMSS or VM ARM ID.
func ParseID(id string) (Pool, error) {
	parts := strings.Split(strings.Trim(id, "/"), "/")
	if len(parts) != 8 || !aadv1.SameID(parts[0], "subscriptions") || !aadv1.SameID(parts[2], "resourceGroups") ||
		!aadv1.SameID(parts[4], "providers") || !aadv1.SameID(parts[5], "Microsoft.Compute") {
		return Pool{}, fmt.Errorf("%q is not a VMSS or VM ARM ID", id)
	}
	p := Pool{Subscription: parts[1], ResourceGroup: parts[3], Name: parts[7]}
	switch {
	case aadv1.SameID(parts[6], string(KindVMSS)):
		p.Kind = KindVMSS
	case aadv1.SameID(parts[6], string(KindVM)):
		p.Kind = KindVM
	default:
		return Pool{}, fmt.Errorf("%q is neither a VMSS nor a VM", id)
	}
	if p.Subscription == "" || p.ResourceGroup == "" || p.Name == "" {
		return Pool{}, fmt.Errorf("%q has an empty segment", id)
	}
	return p, nil
}

// FromProviderID returns the pool behind a Node's spec.providerID:
// azure:///subscriptions/…/virtualMachineScaleSets/<name>/virtualMachines/<id>
// or azure:///subscriptions/…/virtualMachines/<name>.
func FromProviderID(providerID string) (Pool, error) {
	rest, ok := strings.CutPrefix(providerID, "azure://")
	if !ok {
		return Pool{}, fmt.Errorf("providerID %q is not an Azure one", providerID)
	}
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	if len(parts) == 10 && aadv1.SameID(parts[6], string(KindVMSS)) && aadv1.SameID(parts[8], string(KindVM)) {
		parts = parts[:8]
	}
	p, err := ParseID("/" + strings.Join(parts, "/"))
	if err != nil {
		return Pool{}, fmt.Errorf("providerID %q: %w", providerID, err)
	}
	return p, nil
}
