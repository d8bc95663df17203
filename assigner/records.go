package assigner

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// identityKey is the AzureIdentity a record is for.
func identityKey(rec *aadv1.AzureAssignedIdentity) types.NamespacedName {
	return types.NamespacedName{Namespace: rec.Spec.AzureIdentityRef.Namespace, Name: rec.Spec.AzureIdentityRef.Name}
}

// createRecords writes a record for every wanted identity that has none,
// and adds them to s.records. An identity already on the pool that no
// record of ours put there, or one we must never remove, is recorded
// external: nothing ties it to this AzureIdentity, so NMI does not serve it
// by default. One that aad-pod-identity 1.x's MIC put there, as its record
// shows, is ours (legacy.go).
func (r *poolReconciler) createRecords(ctx context.Context, s *poolState) error {
	var missing []types.NamespacedName
	for key := range s.wanted {
		if s.records[key] == nil {
			missing = append(missing, key)
		}
	}
	created := make([]*aadv1.AzureAssignedIdentity, len(missing))
	err := forEach(ctx, len(missing), func(ctx context.Context, i int) error {
		key, w := missing[i], s.wanted[missing[i]]
		spec := w.identity.Spec
		rec := &aadv1.AzureAssignedIdentity{
			ObjectMeta: metav1.ObjectMeta{Namespace: r.namespace, Name: identity.AssignmentName(key, s.pool)},
			Spec: aadv1.AzureAssignedIdentitySpec{
				AzureIdentityRef: aadv1.IdentityReference{Namespace: w.identity.Namespace, Name: w.identity.Name},
				ClientID:         spec.ClientID, ResourceID: spec.ResourceID, NodePool: s.pool.ID(),
			},
		}
		// Decided before the record exists: 1.x's evidence is deleted
		// once a record of ours names the identity on the pool.
		external := s.actual.Has(spec.ResourceID) && !s.ours(spec.ResourceID)
		if external {
			legacy, err := assignedBy1x(ctx, r.client, s.pool, spec.ResourceID)
			if err != nil {
				return err
			}
			if legacy != nil {
				external = false
				metav1.SetMetaDataAnnotation(&rec.ObjectMeta, annotationAdoptedFrom, client.ObjectKeyFromObject(legacy).String())
			}
		}
		if err := r.client.Create(ctx, rec); err != nil {
			// The cache lags behind our own earlier create: retry with it.
			return fmt.Errorf("creating AzureAssignedIdentity %s: %w", rec.Name, err)
		}
		// A record without status is being assigned (it reads as Assigning
		// everywhere): only an external one needs a status write now, so
		// that a crash cannot leave it looking like ours.
		status := aadv1.AzureAssignedIdentityStatus{Status: aadv1.StateAssigning, Pods: w.pods,
			External: external || r.policy.isImmutable(spec.ClientID, spec.ResourceID)}
		if status.External {
			if err := r.setStatus(ctx, rec, status); err != nil {
				return err
			}
		}
		log.FromContext(ctx).Info("recorded assignment", "record", rec.Name, "identity", key, "external", status.External, "adoptedFrom", rec.Annotations[annotationAdoptedFrom])
		created[i] = rec
		return nil
	})
	// Records written before a failure are kept, so the next round sees them.
	for i, rec := range created {
		if rec != nil {
			s.records[missing[i]] = rec
		}
	}
	return err
}

// setWantedStatus writes the status of every recorded wanted identity's
// record, as status computes it from the record and the identity's pods.
// A wanted identity whose stale record was deleted this round has none.
func (r *poolReconciler) setWantedStatus(ctx context.Context, s *poolState, status func(*aadv1.AzureAssignedIdentity, *wantedIdentity) aadv1.AzureAssignedIdentityStatus) error {
	var keys []types.NamespacedName
	for key := range s.wanted {
		if s.records[key] != nil {
			keys = append(keys, key)
		}
	}
	return forEach(ctx, len(keys), func(ctx context.Context, i int) error {
		rec := s.records[keys[i]]
		return r.setStatus(ctx, rec, status(rec, s.wanted[keys[i]]))
	})
}

// repair gives the record of an edited AzureIdentity that names the same
// resource its new client ID. Assigning is written first: a crash between
// the two writes must not leave a record that vouches, Assigned, for a
// pairing ARM has not confirmed.
func (r *poolReconciler) repair(ctx context.Context, rec *aadv1.AzureAssignedIdentity, clientID string) error {
	if err := r.setStatus(ctx, rec, withState(rec.Status, aadv1.StateAssigning, "")); err != nil {
		return err
	}
	orig := rec.DeepCopy()
	rec.Spec.ClientID = clientID
	if err := r.client.Patch(ctx, rec, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("re-pairing AzureAssignedIdentity %s: %w", rec.Name, err)
	}
	log.FromContext(ctx).Info("re-paired assignment", "record", rec.Name, "identity", identityKey(rec), "clientID", clientID)
	return nil
}

func (r *poolReconciler) setStatus(ctx context.Context, rec *aadv1.AzureAssignedIdentity, status aadv1.AzureAssignedIdentityStatus) error {
	if rec.Status == status {
		return nil
	}
	orig := rec.DeepCopy()
	rec.Status = status
	if err := r.client.Status().Patch(ctx, rec, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("updating status of AzureAssignedIdentity %s: %w", rec.Name, err)
	}
	return nil
}

// markUnneeded starts the record's grace period at since.
func (r *poolReconciler) markUnneeded(ctx context.Context, rec *aadv1.AzureAssignedIdentity, since time.Time) error {
	orig := rec.DeepCopy()
	metav1.SetMetaDataAnnotation(&rec.ObjectMeta, annotationUnneededSince, since.UTC().Format(time.RFC3339Nano))
	if err := r.client.Patch(ctx, rec, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("marking AzureAssignedIdentity %s unneeded: %w", rec.Name, err)
	}
	return nil
}

// clearUnneeded ends the record's grace period: a pod wants it again.
func (r *poolReconciler) clearUnneeded(ctx context.Context, rec *aadv1.AzureAssignedIdentity) error {
	orig := rec.DeepCopy()
	delete(rec.Annotations, annotationUnneededSince)
	if err := r.client.Patch(ctx, rec, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("marking AzureAssignedIdentity %s needed: %w", rec.Name, err)
	}
	return nil
}

func (r *poolReconciler) deleteRecord(ctx context.Context, rec *aadv1.AzureAssignedIdentity) error {
	if err := r.client.Delete(ctx, rec); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting AzureAssignedIdentity %s: %w", rec.Name, err)
	}
	log.FromContext(ctx).Info("released assignment", "record", rec.Name, "identity", rec.Spec.ResourceID)
	return nil
}

func withState(s aadv1.AzureAssignedIdentityStatus, state aadv1.AssignmentState, lastError string) aadv1.AzureAssignedIdentityStatus {
	s.Status, s.LastError = state, lastError
	return s
}

// recordWriters bounds the concurrent API writes of one pool round: the
// records of a burst are written in parallel rather than one after the
// other, which was most of the time between a pod's creation and its PATCH.
const recordWriters = 8

// forEach runs fn for 0..n-1 with at most recordWriters at a time and
// returns the first error.
func forEach(ctx context.Context, n int, fn func(context.Context, int) error) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(recordWriters)
	for i := range n {
		g.Go(func() error { return fn(ctx, i) })
	}
	return g.Wait()
}

// countPods keeps each record's pod count current without touching ARM.
func (r *poolReconciler) countPods(ctx context.Context, s *poolState) error {
	return r.setWantedStatus(ctx, s, func(rec *aadv1.AzureAssignedIdentity, w *wantedIdentity) aadv1.AzureAssignedIdentityStatus {
		status := rec.Status
		status.Pods = w.pods
		return status
	})
}
