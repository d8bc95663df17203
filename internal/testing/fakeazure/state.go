// Package fakeazure simulates the Azure services this project talks to (ARM
// compute, IMDS, Azure AD) over one shared state, so that IMDS hands out a
// token only for an identity really assigned to the caller's VMSS or VM.
package fakeazure

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/uuid"
)

// Identity is a user-assigned managed identity, as `az identity create` makes.
type Identity struct {
	ResourceID  string
	Name        string
	ClientID    string
	PrincipalID string
	TenantID    string
}

// PoolKind tells a VMSS from a standalone VM.
type PoolKind string

// Pool kinds.
const (
	KindVMSS PoolKind = "virtualMachineScaleSets"
	KindVM   PoolKind = "virtualMachines"
)

// Pool is a VMSS or a standalone VM with its identities.
type Pool struct {
	ID       string // ARM ID as created (case preserved)
	Kind     PoolKind
	Name     string
	Location string
	// Instances are the VM names of a VMSS (a VM has itself).
	Instances []string
	// SystemAssigned holds the system-assigned identity's principal ID, or "".
	SystemAssigned string
	// UserAssigned maps the lower-cased resource ID of each assigned
	// identity to the identity.
	UserAssigned map[string]Identity
}

// State is the fake cloud. All methods are safe for concurrent use, and
// every change to it is made by a method in this file.
type State struct {
	mu         sync.Mutex
	TenantID   string
	identities map[string]Identity // by lower-cased resource ID
	pools      map[string]*Pool    // by lower-cased ARM ID
	// federated holds each identity's federated credentials, by the
	// identity's lower-cased resource ID, in creation order.
	federated map[string][]FederatedCredential
}

// NewState returns an empty cloud in a fresh tenant.
func NewState() *State {
	return &State{TenantID: uuid.NewString(), identities: map[string]Identity{}, pools: map[string]*Pool{},
		federated: map[string][]FederatedCredential{}}
}

func key(id string) string { return strings.ToLower(id) }

// CreateIdentity registers a user-assigned identity.
func (s *State) CreateIdentity(subscription, resourceGroup, name string) Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := Identity{
		ResourceID:  fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.ManagedIdentity/userAssignedIdentities/%s", subscription, resourceGroup, name),
		Name:        name,
		ClientID:    uuid.NewString(),
		PrincipalID: uuid.NewString(),
		TenantID:    s.TenantID,
	}
	if old, ok := s.identities[key(id.ResourceID)]; ok {
		return old
	}
	s.identities[key(id.ResourceID)] = id
	return id
}

// LookupIdentity finds a registered identity by resource ID (any case).
func (s *State) LookupIdentity(resourceID string) (Identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.identities[key(resourceID)]
	return id, ok
}

// IdentityByClientID finds a registered identity by client ID (any case), as
// Azure AD does when the identity signs in with a federated credential.
func (s *State) IdentityByClientID(clientID string) (Identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range s.identities {
		if strings.EqualFold(id.ClientID, clientID) {
			return id, true
		}
	}
	return Identity{}, false
}

// AddPool creates a VMSS (with instances named <name>_0 … ) or a VM.
func (s *State) AddPool(kind PoolKind, subscription, resourceGroup, name string, instances int, systemAssigned bool) Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &Pool{
		ID:           fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/%s/%s", subscription, resourceGroup, kind, name),
		Kind:         kind,
		Name:         name,
		Location:     "westus2",
		UserAssigned: map[string]Identity{},
	}
	if kind == KindVM {
		p.Instances = []string{name}
	}
	for i := 0; kind == KindVMSS && i < instances; i++ {
		p.Instances = append(p.Instances, fmt.Sprintf("%s_%d", name, i))
	}
	if systemAssigned {
		p.SystemAssigned = uuid.NewString()
	}
	s.pools[key(p.ID)] = p
	return p.copy()
}

// Pool returns a copy of a pool by ARM ID (any case).
func (s *State) Pool(id string) (Pool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[key(id)]
	if !ok {
		return Pool{}, false
	}
	return p.copy(), true
}

// Pools returns copies of the pools whose ARM ID starts with prefix (any
// case), sorted by ID: a resource group's scale sets, for instance.
func (s *State) Pools(prefix string) []Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Pool
	for k, p := range s.pools {
		if strings.HasPrefix(k, key(prefix)) {
			out = append(out, p.copy())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Assigned reports whether the identity with clientID is assigned to pool.
func (s *State) Assigned(poolID, clientID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[key(poolID)]
	if !ok {
		return false
	}
	for _, id := range p.UserAssigned {
		if strings.EqualFold(id.ClientID, clientID) {
			return true
		}
	}
	return false
}

// DeleteIdentity removes a user-assigned identity (`az identity delete`). It
// stays on pools that still list it, as in Azure, where a deleted identity
// lingers on VMs until removed from them.
func (s *State) DeleteIdentity(resourceID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.identities[key(resourceID)]
	delete(s.identities, key(resourceID))
	delete(s.federated, key(resourceID)) // child resources go with it
	return ok
}

// FederatedCredential lets tokens of an external issuer sign in as a
// user-assigned identity (`az identity federated-credential create`).
type FederatedCredential struct {
	// ID is the credential's ARM ID, under its identity's.
	ID        string
	Name      string
	Issuer    string
	Subject   string
	Audiences []string
}

// FederatedAudience is the audience a federated credential accepts unless
// told otherwise, the one Azure AD recommends.
const FederatedAudience = "api://AzureADTokenExchange"

// MaxFederatedCredentials is Azure AD's limit per identity.
const MaxFederatedCredentials = 20

// Errors of CreateFederatedCredential and DeleteFederatedCredential.
var (
	ErrIdentityNotFound            = errors.New("identity not found")
	ErrFederatedCredentialExists   = errors.New("a federated credential with this name exists")
	ErrTooManyFederatedCredentials = fmt.Errorf("an identity has at most %d federated credentials", MaxFederatedCredentials)
	ErrFederatedCredentialNotFound = errors.New("federated credential not found")
)

// CreateFederatedCredential adds a federated credential to the identity with
// resourceID; no audiences means FederatedAudience. Names are unique per
// identity, case-insensitively, as ARM resource names are.
func (s *State) CreateFederatedCredential(resourceID, name, issuer, subject string, audiences ...string) (FederatedCredential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.identities[key(resourceID)]
	if !ok {
		return FederatedCredential{}, fmt.Errorf("%w: %s", ErrIdentityNotFound, resourceID)
	}
	creds := s.federated[key(resourceID)]
	if federatedIndex(creds, name) >= 0 {
		return FederatedCredential{}, fmt.Errorf("%w: %s", ErrFederatedCredentialExists, name)
	}
	if len(creds) >= MaxFederatedCredentials {
		return FederatedCredential{}, ErrTooManyFederatedCredentials
	}
	if len(audiences) == 0 {
		audiences = []string{FederatedAudience}
	}
	fc := FederatedCredential{ID: id.ResourceID + "/federatedIdentityCredentials/" + name, Name: name,
		Issuer: issuer, Subject: subject, Audiences: slices.Clone(audiences)}
	s.federated[key(resourceID)] = append(creds, fc)
	return fc, nil
}

// DeleteFederatedCredential removes an identity's federated credential by
// name (any case).
func (s *State) DeleteFederatedCredential(resourceID, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	creds := s.federated[key(resourceID)]
	i := federatedIndex(creds, name)
	if i < 0 {
		return fmt.Errorf("%w: %s on %s", ErrFederatedCredentialNotFound, name, resourceID)
	}
	s.federated[key(resourceID)] = slices.Delete(slices.Clone(creds), i, i+1)
	return nil
}

// FederatedCredentials returns copies of an identity's federated
// credentials in creation order.
func (s *State) FederatedCredentials(resourceID string) []FederatedCredential {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []FederatedCredential
	for _, fc := range s.federated[key(resourceID)] {
		fc.Audiences = slices.Clone(fc.Audiences)
		out = append(out, fc)
	}
	return out
}

func federatedIndex(creds []FederatedCredential, name string) int {
	return slices.IndexFunc(creds, func(fc FederatedCredential) bool { return strings.EqualFold(fc.Name, name) })
}

// SetUserAssigned adds or removes a user-assigned identity on a pool out of
// band, as another tool or a person in the portal would, or as tests of
// token serving that need no assigner do.
func (s *State) SetUserAssigned(poolID, resourceID string, present bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[key(poolID)]
	if !ok {
		return fmt.Errorf("pool %s not found", poolID)
	}
	if !present {
		delete(p.UserAssigned, key(resourceID))
		return nil
	}
	ident, ok := s.identities[key(resourceID)]
	if !ok {
		return fmt.Errorf("identity %s not found", resourceID)
	}
	p.UserAssigned[key(resourceID)] = ident
	return nil
}

// applyPatch makes an accepted ARM PATCH take effect, with ARM's type
// semantics: a type without UserAssigned drops every user-assigned identity,
// a type without SystemAssigned drops the system-assigned one. Identities
// deleted since the PATCH was accepted are skipped, as ARM does.
func (s *State) applyPatch(poolID, typ string, body map[string]bool) {
	if typ == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[key(poolID)]
	if !ok {
		return
	}
	merged := mergeUserAssigned(p.UserAssigned, body)
	p.UserAssigned = map[string]Identity{}
	if strings.Contains(typ, TypeUserAssigned) {
		for id := range merged {
			if ident, ok := s.identities[id]; ok {
				p.UserAssigned[id] = ident
			}
		}
	}
	switch {
	case !strings.Contains(typ, TypeSystemAssigned):
		p.SystemAssigned = ""
	case p.SystemAssigned == "":
		p.SystemAssigned = uuid.NewString()
	}
}

func (p *Pool) copy() Pool {
	c := *p
	c.Instances = append([]string(nil), p.Instances...)
	c.UserAssigned = maps.Clone(p.UserAssigned)
	return c
}
