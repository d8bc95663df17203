package assigner

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// entryKey is the AzureIdentity an entry is for.
func entryKey(e *aadv1.IdentityAssignment) types.NamespacedName {
	return types.NamespacedName{Namespace: e.AzureIdentityRef.Namespace, Name: e.AzureIdentityRef.Name}
}

// recordWanted adds an entry for every wanted identity that has none. An
// identity already on the pool that no entry of ours put there, or one we
// must never remove, is recorded external: nothing ties it to this
// AzureIdentity, so NMI does not serve it by default. One that aad-pod-identity
// 1.x's MIC put there for this AzureIdentity, as its record shows, is
// served but preexisting: never removed (legacy.go). The entries reach the
// API server with the flush that precedes the ARM write.
func (r *poolReconciler) recordWanted(ctx context.Context, s *poolState) error {
	for _, key := range slices.SortedFunc(maps.Keys(s.wanted), compareKeys) {
		if s.entries[key] != nil {
			continue
		}
		spec := s.wanted[key].identity.Spec
		e := &aadv1.IdentityAssignment{
			AzureIdentityRef: aadv1.IdentityReference{Namespace: key.Namespace, Name: key.Name},
			ClientID:         spec.ClientID, ResourceID: spec.ResourceID,
			State: aadv1.StateAssigning, Pods: s.wanted[key].pods,
		}
		// Decided before the entry exists: 1.x's evidence is deleted once
		// an entry of ours names the identity on the pool.
		if s.actual.Has(spec.ResourceID) && !s.ours(spec.ResourceID) {
			legacy, err := assignedBy1x(ctx, r.client, evidence1x{pool: s.pool, identity: key, resourceID: spec.ResourceID, before: r.legacyBefore})
			if err != nil {
				return err
			}
			if legacy != nil {
				e.AdoptedFrom = client.ObjectKeyFromObject(legacy).String()
				e.Preexisting = true
			} else {
				e.External = true
			}
		}
		e.External = e.External || r.policy.isImmutable(spec.ClientID, spec.ResourceID)
		s.entries[key] = e
		log.FromContext(ctx).Info("recording assignment", "identity", key, "external", e.External, "adoptedFrom", e.AdoptedFrom, "preexisting", e.Preexisting)
	}
	return nil
}

// compareKeys is the order of a record's entries (aadv1.CompareRefs).
func compareKeys(a, b types.NamespacedName) int {
	return aadv1.CompareRefs(aadv1.IdentityReference{Namespace: a.Namespace, Name: a.Name}, b.Namespace, b.Name)
}

// flush writes the entries back as the pool record's status: one write per
// call at most, however many identities changed. The record is created
// first if need be, and deleted once it has no entry left. Earlier
// one-identity records are deleted once the record holds their entries.
func (r *poolReconciler) flush(ctx context.Context, s *poolState) error {
	status := recordStatus(s.pool.Name, s.entries)
	if s.record == nil {
		if len(status.Identities) == 0 {
			return r.deleteSingle(ctx, s)
		}
		rec := &aadv1.AzureAssignedIdentity{
			ObjectMeta: metav1.ObjectMeta{Namespace: r.namespace, Name: identity.RecordName(s.pool)},
			Spec:       aadv1.AzureAssignedIdentitySpec{NodePool: s.pool.ID()},
		}
		if err := r.client.Create(ctx, rec); err != nil {
			return fmt.Errorf("creating AzureAssignedIdentity %s: %w", rec.Name, err)
		}
		s.record = rec
	}
	if len(status.Identities) == 0 {
		if err := r.client.Delete(ctx, s.record, client.Preconditions{ResourceVersion: &s.record.ResourceVersion}); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting AzureAssignedIdentity %s: %w", s.record.Name, err)
		}
		log.FromContext(ctx).Info("deleted the pool's record: no identity left", "record", s.record.Name)
		r.written.forget(s.pool.Key())
		s.record = nil
		return r.deleteSingle(ctx, s)
	}
	if !equality.Semantic.DeepEqual(s.record.Status, status) {
		rec := s.record.DeepCopy()
		rec.Status = status
		// The lock makes a write based on a cache that lags behind our
		// previous one fail rather than lose entries.
		if err := r.client.Status().Patch(ctx, rec, client.MergeFromWithOptions(s.record, client.MergeFromWithOptimisticLock{})); err != nil {
			return fmt.Errorf("updating status of AzureAssignedIdentity %s: %w", rec.Name, err)
		}
		recordWrites.Inc()
		s.record = rec
		r.written.store(s.pool.Key(), rec)
	}
	return r.deleteSingle(ctx, s)
}

// deleteSingle deletes the earlier one-identity records of the pool, now
// that the pool's record holds what they said.
func (r *poolReconciler) deleteSingle(ctx context.Context, s *poolState) error {
	for _, rec := range s.single {
		if err := r.client.Delete(ctx, rec); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting one-identity AzureAssignedIdentity %s: %w", rec.Name, err)
		}
		log.FromContext(ctx).Info("took over a one-identity record", "record", rec.Name)
	}
	s.single = nil
	return nil
}

// recordStatus is the record status of the pool named poolName for
// entries: sorted, with counts. An entry waiting out its grace period shows
// no pods: counts are kept up to date for wanted entries only, and the
// record must not show pods next to unneededSince.
func recordStatus(poolName string, entries map[types.NamespacedName]*aadv1.IdentityAssignment) aadv1.AzureAssignedIdentityStatus {
	st := aadv1.AzureAssignedIdentityStatus{NodePoolName: poolName}
	for _, key := range slices.SortedFunc(maps.Keys(entries), compareKeys) {
		e := *entries[key]
		if e.UnneededSince != nil {
			e.Pods = 0
		}
		st.Identities = append(st.Identities, e)
		switch e.State {
		case aadv1.StateAssigned:
			st.Assigned++
		case aadv1.StateFailed:
			st.Failed++
		default:
			st.Assigning++
		}
	}
	return st
}

func setState(e *aadv1.IdentityAssignment, state aadv1.AssignmentState, lastError string) {
	e.State, e.LastError = state, lastError
}

// writtenRecords remembers each pool's record as the assigner last wrote
// it. The assigner is the records' only writer, so for a few seconds after
// a write its own copy is newer than a cache that has not seen the write
// yet; using it spares the round a failed (conflicting) write.
type writtenRecords struct {
	clock clock.PassiveClock
	mu    sync.Mutex
	pools map[string]written
}

type written struct {
	rec *aadv1.AzureAssignedIdentity
	at  time.Time
}

// trustOwnWrite is how long the assigner's own copy is preferred to a
// cache that differs from it.
const trustOwnWrite = 5 * time.Second

func (w *writtenRecords) store(pool string, rec *aadv1.AzureAssignedIdentity) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pools[pool] = written{rec: rec.DeepCopy(), at: w.clock.Now()}
}

func (w *writtenRecords) forget(pool string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.pools, pool)
}

// newest returns the cached record, or our last write of it when the cache
// does not show that write yet. A write based on the wrong one fails on its
// resource version, so a mistake costs a retry, never an entry.
func (w *writtenRecords) newest(pool string, cached *aadv1.AzureAssignedIdentity) *aadv1.AzureAssignedIdentity {
	w.mu.Lock()
	defer w.mu.Unlock()
	own, ok := w.pools[pool]
	switch {
	case !ok || (cached != nil && cached.ResourceVersion == own.rec.ResourceVersion):
		return cached
	case w.clock.Since(own.at) < trustOwnWrite:
		return own.rec.DeepCopy()
	default:
		delete(w.pools, pool)
		return cached
	}
}
