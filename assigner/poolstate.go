package assigner

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// poolState is what one round knows of a pool: the identities its live
// pods want, our records on it, and what ARM reports once it is read.
type poolState struct {
	pool    nodepool.Pool
	wanted  map[types.NamespacedName]*wantedIdentity
	records map[types.NamespacedName]*aadv1.AzureAssignedIdentity
	// unseen: a live pod the pod controller has not targeted yet carries a
	// user-assigned identity missing from wanted; it may be for this pool,
	// so its identity should go in the same PATCH.
	unseen bool
	// actual is read from ARM only when the round has to write or check.
	actual Actual
}

// wantedIdentity is a user-assigned AzureIdentity the pool's live pods
// use, and how many of them do.
type wantedIdentity struct {
	identity aadv1.AzureIdentity
	pods     int32
}

// empty reports whether nothing of ours concerns the pool.
func (s *poolState) empty() bool { return len(s.wanted) == 0 && len(s.records) == 0 }

// unrecorded counts the wanted identities without a record yet.
func (s *poolState) unrecorded() int {
	n := 0
	for key := range s.wanted {
		if s.records[key] == nil {
			n++
		}
	}
	return n
}

// inPlace reports whether every wanted identity is recorded Assigned and
// no record waits for removal: with a recent read of the pool, the round
// needs no ARM call.
func (s *poolState) inPlace() bool {
	if len(s.records) != len(s.wanted) {
		return false
	}
	for key := range s.wanted {
		rec := s.records[key]
		if rec == nil || rec.Status.Status != aadv1.StateAssigned || s.stale(key) {
			return false
		}
		if _, ok := rec.Annotations[annotationUnneededSince]; ok {
			return false
		}
	}
	return true
}

// countsChanged reports whether a record's pod count is not what the
// pool's pods say.
func (s *poolState) countsChanged() bool {
	for key, w := range s.wanted {
		if rec := s.records[key]; rec != nil && rec.Status.Pods != w.pods {
			return true
		}
	}
	return false
}

// stale reports whether key's record pairs another client or resource ID
// than its AzureIdentity names now: the AzureIdentity was edited after
// assignment.
func (s *poolState) stale(key types.NamespacedName) bool {
	w, rec := s.wanted[key], s.records[key]
	return w != nil && rec != nil && !identity.SamePairing(rec, w.identity.Spec.ClientID, w.identity.Spec.ResourceID)
}

// ours reports whether a record of ours that is not external holds the
// resource: another AzureIdentity naming the same identity, put on the pool
// by the assigner.
func (s *poolState) ours(resourceID string) bool {
	for _, rec := range s.records {
		if !rec.Status.External && strings.EqualFold(rec.Spec.ResourceID, resourceID) {
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
	if s.records, err = r.records(ctx, pool); err != nil {
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

// wantedIdentities sums, per AzureIdentity, the live pods targeting pool.
func (r *poolReconciler) wantedIdentities(ctx context.Context, pool nodepool.Pool) (map[types.NamespacedName]*wantedIdentity, error) {
	var pods corev1.PodList
	if err := r.client.List(ctx, &pods, client.MatchingFields{podPoolIndex: pool.Key()}); err != nil {
		return nil, fmt.Errorf("listing pods of pool: %w", err)
	}
	wanted := map[types.NamespacedName]*wantedIdentity{}
	skipped := map[types.NamespacedName]bool{}
	for i := range pods.Items {
		if !identity.Live(&pods.Items[i]) {
			continue
		}
		for _, key := range identity.Admitted(&pods.Items[i]) {
			if w, ok := wanted[key]; ok {
				w.pods++
				continue
			}
			if skipped[key] {
				continue
			}
			id, ok, err := r.userAssigned(ctx, key)
			if err != nil {
				return nil, err
			}
			if !ok {
				skipped[key] = true
				continue
			}
			wanted[key] = &wantedIdentity{identity: id, pods: 1}
		}
	}
	return wanted, nil
}

// unseenIdentities reports whether a live pod the pod controller has not
// handled yet carries a user-assigned identity missing from wanted.
func (r *poolReconciler) unseenIdentities(ctx context.Context, wanted map[types.NamespacedName]*wantedIdentity) (bool, error) {
	var pods corev1.PodList
	if err := r.client.List(ctx, &pods, client.MatchingFields{podPoolIndex: untargeted}); err != nil {
		return false, fmt.Errorf("listing pods without target pools: %w", err)
	}
	for i := range pods.Items {
		if !identity.Live(&pods.Items[i]) {
			continue
		}
		for _, key := range identity.Admitted(&pods.Items[i]) {
			if wanted[key] != nil {
				continue
			}
			if _, ok, err := r.userAssigned(ctx, key); err != nil || ok {
				return ok, err
			}
		}
	}
	return false, nil
}

// userAssigned returns the AzureIdentity behind key, and whether it is a
// user-assigned one the assigner can put on a pool (a missing one is not).
func (r *poolReconciler) userAssigned(ctx context.Context, key types.NamespacedName) (aadv1.AzureIdentity, bool, error) {
	var id aadv1.AzureIdentity
	if err := r.client.Get(ctx, key, &id); err != nil {
		if apierrors.IsNotFound(err) {
			return id, false, nil
		}
		return id, false, fmt.Errorf("getting AzureIdentity %s: %w", key, err)
	}
	return id, id.Spec.Type == aadv1.UserAssignedMSI && id.Spec.ResourceID != "", nil
}

// records returns the pool's AzureAssignedIdentities by identity key.
func (r *poolReconciler) records(ctx context.Context, pool nodepool.Pool) (map[types.NamespacedName]*aadv1.AzureAssignedIdentity, error) {
	var list aadv1.AzureAssignedIdentityList
	if err := r.client.List(ctx, &list, client.InNamespace(r.namespace), client.MatchingFields{recordPoolIndex: pool.Key()}); err != nil {
		return nil, fmt.Errorf("listing AzureAssignedIdentities of pool: %w", err)
	}
	out := make(map[types.NamespacedName]*aadv1.AzureAssignedIdentity, len(list.Items))
	for i := range list.Items {
		out[identityKey(&list.Items[i])] = &list.Items[i]
	}
	return out, nil
}
