package assigner

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// poolARM is what the pool controller asks of ARM.
type poolARM interface {
	Get(ctx context.Context, pool nodepool.Pool) (Actual, error)
	// Update returns the pool's identities as ARM reports them after the write.
	Update(ctx context.Context, pool nodepool.Pool, p Patch) (Actual, error)
}

// apply carries out a plan: the records' grace-period bookkeeping, the ARM
// writes, then their outcome on the records.
func (r *poolReconciler) apply(ctx context.Context, s *poolState, p plan) (ctrl.Result, error) {
	for _, rec := range p.clearUnneeded {
		if err := r.clearUnneeded(ctx, rec); err != nil {
			return ctrl.Result{}, err
		}
	}
	for _, rec := range p.markUnneeded {
		if err := r.markUnneeded(ctx, rec, p.unneededSince); err != nil {
			return ctrl.Result{}, err
		}
	}
	for _, rec := range p.drop {
		if err := r.deleteRecord(ctx, rec); err != nil {
			return ctrl.Result{}, err
		}
		delete(s.records, identityKey(rec))
	}
	for _, rec := range p.repair {
		if err := r.repair(ctx, rec, s.wanted[identityKey(rec)].identity.Spec.ClientID); err != nil {
			return ctrl.Result{}, err
		}
	}
	refused, err := r.write(ctx, s, p.add, p.remove)
	if err != nil {
		return r.armFailed(ctx, s, err)
	}
	r.pacer.armSucceeded(s.pool.Key())
	err = forEach(ctx, len(p.remove), func(ctx context.Context, i int) error {
		return r.deleteRecord(ctx, p.remove[i])
	})
	if err != nil {
		return ctrl.Result{}, err
	}
	for _, rec := range p.remove {
		delete(s.records, identityKey(rec))
	}
	// A record whose state stays gets a new pod count only when counts are
	// due, as in a settled round.
	countNow := s.countsChanged() && r.pacer.countsDue(s.pool.Key()) == 0
	err = r.setWantedStatus(ctx, s, func(rec *aadv1.AzureAssignedIdentity, w *wantedIdentity) aadv1.AzureAssignedIdentityStatus {
		status := assignmentStatus(rec, w.pods, s.actual, refused)
		if !countNow && status.Status == rec.Status.Status && status.LastError == rec.Status.LastError {
			status.Pods = rec.Status.Pods
		}
		return status
	})
	if err != nil {
		return ctrl.Result{}, err
	}
	if !countNow && s.countsChanged() {
		return ctrl.Result{RequeueAfter: positiveMin(p.requeueAfter, countInterval)}, nil
	}
	return ctrl.Result{RequeueAfter: p.requeueAfter}, nil
}

// positiveMin is the shorter of two delays, 0 meaning none.
func positiveMin(a, b time.Duration) time.Duration {
	if a <= 0 {
		return b
	}
	return min(a, b)
}

// write marks the removals Unassigning and sends the PATCHes; see
// writeIdentities.
func (r *poolReconciler) write(ctx context.Context, s *poolState, add, remove []*aadv1.AzureAssignedIdentity) (map[string]string, error) {
	for _, rec := range remove {
		if err := r.setStatus(ctx, rec, withState(rec.Status, aadv1.StateUnassigning, "")); err != nil {
			return nil, err
		}
	}
	return writeIdentities(ctx, r.arm, s.pool, s.actual, resourceIDs(add), resourceIDs(remove))
}

// writeIdentities sends the PATCHes for add and remove and keeps actual
// current. An identity ARM refuses by name is dropped from the batch and
// returned (lower-cased resource ID → error), and the rest is sent again,
// so that one bad identity does not hold back the others; any other error
// stops the writes.
func writeIdentities(ctx context.Context, arm poolARM, pool nodepool.Pool, actual Actual, add, remove []string) (map[string]string, error) {
	refused := map[string]string{}
	for {
		err := writeOnce(ctx, arm, pool, actual, add, remove)
		if err == nil {
			return refused, nil
		}
		bad := badIdentities(err, add)
		if len(bad) == 0 {
			return refused, err
		}
		for _, id := range bad {
			refused[strings.ToLower(id)] = armErrorText(err)
			add = slices.DeleteFunc(add, func(s string) bool { return strings.EqualFold(s, id) })
		}
		assignmentFailures.Add(float64(len(bad)))
		log.FromContext(ctx).Info("ARM refused identities; sending the rest", "pool", pool.ID(), "refused", bad, "error", armErrorText(err))
	}
}

func writeOnce(ctx context.Context, arm poolARM, pool nodepool.Pool, actual Actual, add, remove []string) error {
	for _, p := range Patches(actual, add, remove) {
		log.FromContext(ctx).Info("patching pool", "pool", pool.ID(), "type", p.Type, "add", len(p.Add), "remove", len(p.Remove))
		after, err := arm.Update(ctx, pool, p)
		if err != nil {
			return err
		}
		// The client IDs come from ARM's answer: they are what ties a
		// resource ID to the client ID NMI will ask IMDS for.
		for _, id := range p.Add {
			actual.UserAssigned[strings.ToLower(id)] = after.ClientID(id)
		}
		for _, id := range p.Remove {
			delete(actual.UserAssigned, strings.ToLower(id))
		}
	}
	return nil
}

// assignmentStatus is a wanted identity's record status after the writes:
// Failed if ARM refused it or reports another client ID for its resource
// than the AzureIdentity names, Assigned once it is on the pool with that
// client ID; a Failed record not retried this round stays so.
func assignmentStatus(rec *aadv1.AzureAssignedIdentity, pods int32, actual Actual, refused map[string]string) aadv1.AzureAssignedIdentityStatus {
	status := rec.Status
	rid := rec.Spec.ResourceID
	switch msg, ok := refused[strings.ToLower(rid)]; {
	case ok:
		status = withState(rec.Status, aadv1.StateFailed, msg)
	case !actual.Has(rid):
	case !strings.EqualFold(actual.ClientID(rid), rec.Spec.ClientID):
		status = withState(rec.Status, aadv1.StateFailed, fmt.Sprintf(
			"ARM reports client ID %q for identity %s, but the AzureIdentity names client ID %s: correct its spec.clientID (NMI serves only the pair ARM confirms)",
			actual.ClientID(rid), rid, rec.Spec.ClientID))
	default:
		status = withState(rec.Status, aadv1.StateAssigned, "")
	}
	status.Pods = pods
	return status
}

// armFailed handles an ARM error that stopped the round: the error is kept
// on the records still waiting, and the pacer says how long to wait.
func (r *poolReconciler) armFailed(ctx context.Context, s *poolState, err error) (ctrl.Result, error) {
	text := armErrorText(err)
	for _, rec := range s.records {
		if state := rec.Status.Status; state == "" || state == aadv1.StateAssigning || state == aadv1.StateUnassigning {
			if state == "" {
				state = aadv1.StateAssigning
			}
			if serr := r.setStatus(ctx, rec, withState(rec.Status, state, text)); serr != nil {
				return ctrl.Result{}, serr
			}
		}
	}
	wait, throttled := r.pacer.armFailed(s.pool, err)
	if throttled {
		armThrottled.Inc()
		log.FromContext(ctx).Info("ARM throttled; pausing the subscription", "pool", s.pool.ID(), "retryAfter", wait)
	} else {
		log.FromContext(ctx).Info("ARM request failed; backing off", "pool", s.pool.ID(), "error", text, "backoff", wait)
	}
	return ctrl.Result{RequeueAfter: wait}, nil
}

func resourceIDs(recs []*aadv1.AzureAssignedIdentity) []string {
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.Spec.ResourceID)
	}
	return out
}
