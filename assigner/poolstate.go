package assigner

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/compat"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// poolState is what one round knows of a pool: the identities its live
// pods want, our entries for it, and what ARM reports once it is read.
type poolState struct {
	pool   nodepool.Pool
	wanted map[types.NamespacedName]*wantedIdentity
	// record is the pool's AzureAssignedIdentity as last read or written
	// (nil: none yet); entries is the round's working copy of its
	// identities, written back by flush.
	record  *aadv1.AzureAssignedIdentity
	entries map[types.NamespacedName]*aadv1.IdentityAssignment
	// single are earlier one-identity records of ours (0.1) on the pool:
	// taken over into entries and deleted once the record holds them.
	single []*aadv1.AzureAssignedIdentity
	// unseen: a live pod the pod controller has not targeted yet carries a
	// user-assigned identity missing from wanted; it may be for this pool,
	// so its identity should go in the same PATCH.
	unseen bool
	// actual is read from ARM only when the round has to write or check.
	actual Actual
}

// wantedIdentity is a user-assigned AzureIdentity the pool's live pods
// use, how many of them do, and when the oldest of them was created.
type wantedIdentity struct {
	identity aadv1.AzureIdentity
	pods     int32
	oldest   time.Time
}

// empty reports whether nothing of ours concerns the pool.
func (s *poolState) empty() bool {
	return len(s.wanted) == 0 && len(s.entries) == 0 && s.record == nil && len(s.single) == 0
}

// unrecorded counts the wanted identities without an entry yet.
func (s *poolState) unrecorded() int {
	n := 0
	for key := range s.wanted {
		if s.entries[key] == nil {
			n++
		}
	}
	return n
}

// inPlace reports whether every wanted identity is recorded Assigned and
// no entry waits for removal: with a recent read of the pool, the round
// needs no ARM call.
func (s *poolState) inPlace() bool {
	if len(s.entries) != len(s.wanted) || len(s.single) > 0 {
		return false
	}
	for key := range s.wanted {
		e := s.entries[key]
		if e == nil || e.State != aadv1.StateAssigned || e.UnneededSince != nil || s.stale(key) {
			return false
		}
	}
	return true
}

// countsChanged reports whether an entry's pod count is not what the
// pool's pods say.
func (s *poolState) countsChanged() bool {
	for key, w := range s.wanted {
		if e := s.entries[key]; e != nil && e.Pods != w.pods {
			return true
		}
	}
	return false
}

// stale reports whether key's entry pairs another client or resource ID
// than its AzureIdentity names now: the AzureIdentity was edited after
// assignment.
func (s *poolState) stale(key types.NamespacedName) bool {
	w, e := s.wanted[key], s.entries[key]
	return w != nil && e != nil && !identity.SamePairing(e, w.identity.Spec.ClientID, w.identity.Spec.ResourceID)
}

// ours reports whether an entry of ours that is not external holds the
// resource: another AzureIdentity naming the same identity, put on the pool
// by the assigner.
func (s *poolState) ours(resourceID string) bool {
	for _, e := range s.entries {
		if !e.External && aadv1.SameID(e.ResourceID, resourceID) {
			return true
		}
	}
	return false
}

// preexisting reports whether an entry says the resource was on the pool
// before the assigner recorded it (1.x's): then no entry removes it.
func (s *poolState) preexisting(resourceID string) bool {
	for _, e := range s.entries {
		if e.Preexisting && aadv1.SameID(e.ResourceID, resourceID) {
			return true
		}
	}
	return false
}

// gather reads the pool's state from the cache; ARM is not asked.
func (r *poolReconciler) gather(ctx context.Context, pool nodepool.Pool) (*poolState, error) {
	s := &poolState{pool: pool}
	var err error
	if s.wanted, err = r.wantedIdentities(ctx, pool); err != nil {
		return nil, err
	}
	if err := r.readRecords(ctx, s); err != nil {
		return nil, err
	}
	if s.empty() {
		return s, nil
	}
	if s.unseen, err = r.unseenIdentities(ctx, s.wanted); err != nil {
		return nil, err
	}
	return s, nil
}

// wantedIdentities returns the user-assigned AzureIdentities of the live
// pods targeting pool, with how many of them (the tally's count) use each.
func (r *poolReconciler) wantedIdentities(ctx context.Context, pool nodepool.Pool) (map[types.NamespacedName]*wantedIdentity, error) {
	wanted := map[types.NamespacedName]*wantedIdentity{}
	for key, n := range r.tally.wanted(pool.Key()) {
		id, ok, err := r.userAssigned(ctx, key)
		if err != nil {
			return nil, err
		}
		if ok {
			wanted[key] = &wantedIdentity{identity: id, pods: n.pods, oldest: n.oldest}
		}
	}
	return wanted, nil
}

// unseenIdentities reports whether a live pod the pod controller has not
// handled yet carries a user-assigned identity missing from wanted.
func (r *poolReconciler) unseenIdentities(ctx context.Context, wanted map[types.NamespacedName]*wantedIdentity) (bool, error) {
	for _, key := range r.tally.untargetedIdentities() {
		if wanted[key] != nil {
			continue
		}
		if _, ok, err := r.userAssigned(ctx, key); err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

// userAssigned returns the AzureIdentity behind key, and whether it is a
// user-assigned one the assigner puts on a pool (a missing or federated one
// is not).
func (r *poolReconciler) userAssigned(ctx context.Context, key types.NamespacedName) (aadv1.AzureIdentity, bool, error) {
	var id aadv1.AzureIdentity
	if err := r.client.Get(ctx, key, &id); err != nil {
		if apierrors.IsNotFound(err) {
			return id, false, nil
		}
		return id, false, fmt.Errorf("getting AzureIdentity %s: %w", key, err)
	}
	return id, id.Spec.Type == aadv1.UserAssignedMSI && id.Spec.ResourceID != "" && !identity.Federated(&id, false), nil
}

// readRecords reads the pool's record into s.entries, and the earlier
// one-identity records of the pool, which become entries unless the record
// already has one for their AzureIdentity.
func (r *poolReconciler) readRecords(ctx context.Context, s *poolState) error {
	var list aadv1.AzureAssignedIdentityList
	if err := r.client.List(ctx, &list, client.InNamespace(r.namespace), client.MatchingFields{recordPoolIndex: s.pool.Key()}); err != nil {
		return fmt.Errorf("listing AzureAssignedIdentities of pool: %w", err)
	}
	name := identity.RecordName(s.pool)
	var cached *aadv1.AzureAssignedIdentity
	s.entries = map[types.NamespacedName]*aadv1.IdentityAssignment{}
	var takenOver []*aadv1.IdentityAssignment
	for i := range list.Items {
		rec := &list.Items[i]
		if rec.Name == name {
			cached = rec
		} else if e, ok := compat.Read01(rec); ok {
			s.single = append(s.single, rec)
			takenOver = append(takenOver, e)
		}
	}
	s.record = r.written.newest(s.pool.Key(), cached)
	if s.record != nil {
		for i := range s.record.Status.Identities {
			e := s.record.Status.Identities[i].DeepCopy()
			s.entries[entryKey(e)] = e
		}
	}
	for _, e := range takenOver {
		if s.entries[entryKey(e)] == nil {
			s.entries[entryKey(e)] = e
		}
	}
	return nil
}
