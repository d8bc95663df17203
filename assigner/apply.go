package assigner

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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

// apply carries out a plan: the entries' bookkeeping and the ownership of
// what is about to be added go to the record first (one write), then the
// ARM write, then its outcome (one more write).
//
// A plan needing several ARM requests (over MaxIdentitiesPerRequest
// identities) sends only its first, the oldest pods' identities (decide's
// order), and requeues the pool behind the pools already waiting; its next
// round sends the rest (pacer.yield). Every pool's first request thus goes
// before any pool's second, and the oldest pods are released once their
// identities are on their own pools, instead of after a few pools' every
// request.
func (r *poolReconciler) apply(ctx context.Context, s *poolState, p plan) (ctrl.Result, error) {
	for _, e := range p.clearUnneeded {
		// Its pods come back in the same write: the entry showed none
		// while unneeded (recordStatus).
		e.UnneededSince, e.Pods = nil, s.wanted[entryKey(e)].pods
	}
	for _, e := range p.markUnneeded {
		e.UnneededSince = &metav1.MicroTime{Time: p.unneededSince}
	}
	for _, e := range p.drop {
		delete(s.entries, entryKey(e))
	}
	for _, e := range p.repair {
		// One write carries the new client ID and Assigning together, so
		// nothing vouches for a pairing ARM has not confirmed.
		e.ClientID = s.wanted[entryKey(e)].identity.Spec.ClientID
		setState(e, aadv1.StateAssigning, "")
		log.FromContext(ctx).Info("re-pairing assignment", "identity", entryKey(e), "clientID", e.ClientID)
	}
	for _, e := range p.remove {
		setState(e, aadv1.StateUnassigning, "")
	}
	before := states(s.entries)
	if err := r.flush(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	add, remove, requeue := resourceIDs(p.add), resourceIDs(p.remove), p.requeueAfter
	if ps := Patches(s.actual, add, remove); r.pacer.yield(s.pool.Key(), len(ps)) {
		add, remove, requeue = ps[0].Add, ps[0].Remove, time.Millisecond
	}
	refused, err := writeIdentities(ctx, r.arm, s.pool, s.actual, add, remove)
	if err != nil {
		return r.armFailed(ctx, s, err)
	}
	r.pacer.armSucceeded(s.pool.Key())
	var removed []*aadv1.IdentityAssignment
	for _, e := range p.remove {
		if !s.actual.Has(e.ResourceID) {
			removed = append(removed, e)
			delete(s.entries, entryKey(e))
		}
	}
	// An entry whose state stays gets a new pod count only when counts are
	// due, as in a settled round.
	countNow := s.countsChanged() && r.pacer.countsDue(s.pool.Key()) == 0
	for key, w := range s.wanted {
		e := s.entries[key]
		if e == nil {
			continue // stale, dropped this round
		}
		state, lastError := e.State, e.LastError
		assignmentStatus(e, s.actual, refused)
		if countNow || e.State != state || e.LastError != lastError {
			e.Pods = w.pods
		}
		if e.State == aadv1.StateFailed && (state != e.State || lastError != e.LastError) {
			// The pods' events and annotations carry no ARM text: this log
			// and the record do.
			log.FromContext(ctx).Info("identity assignment failed", "identity", key, "pool", s.pool.ID(), "error", e.LastError)
		}
	}
	if err := r.flush(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	r.announce(s, before, removed)
	if !countNow && s.countsChanged() {
		return ctrl.Result{RequeueAfter: positiveMin(requeue, countInterval)}, nil
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// positiveMin is the shorter of two delays, 0 meaning none.
func positiveMin(a, b time.Duration) time.Duration {
	if a <= 0 {
		return b
	}
	return min(a, b)
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
			refused[aadv1.IDKey(id)] = armErrorText(err)
			add = slices.DeleteFunc(add, func(s string) bool { return aadv1.SameID(s, id) })
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
			actual.UserAssigned[aadv1.IDKey(id)] = after.ClientID(id)
		}
		for _, id := range p.Remove {
			delete(actual.UserAssigned, aadv1.IDKey(id))
		}
	}
	return nil
}

// assignmentStatus sets a wanted identity's entry after the writes:
// Failed if ARM refused it or reports another client ID for its resource
// than the AzureIdentity names, Assigned once it is on the pool with that
// client ID; a Failed entry not retried this round stays so.
func assignmentStatus(e *aadv1.IdentityAssignment, actual Actual, refused map[string]string) {
	rid := e.ResourceID
	switch msg, ok := refused[aadv1.IDKey(rid)]; {
	case ok:
		setState(e, aadv1.StateFailed, msg)
	case !actual.Has(rid):
	case !aadv1.SameID(actual.ClientID(rid), e.ClientID):
		setState(e, aadv1.StateFailed, fmt.Sprintf(
			"ARM reports client ID %q for identity %s, but the AzureIdentity names client ID %s: correct its spec.clientID (NMI serves only the pair ARM confirms)",
			actual.ClientID(rid), rid, e.ClientID))
	default:
		setState(e, aadv1.StateAssigned, "")
	}
}

// armFailed handles an ARM error that stopped the round: the error is kept
// on the entries still waiting, and the pacer says how long to wait.
func (r *poolReconciler) armFailed(ctx context.Context, s *poolState, err error) (ctrl.Result, error) {
	text := armErrorText(err)
	for _, e := range s.entries {
		if state := e.State; state == "" || state == aadv1.StateAssigning || state == aadv1.StateUnassigning {
			if state == "" {
				state = aadv1.StateAssigning
			}
			setState(e, state, text)
		}
	}
	if serr := r.flush(ctx, s); serr != nil {
		return ctrl.Result{}, serr
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

func resourceIDs(entries []*aadv1.IdentityAssignment) []string {
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.ResourceID)
	}
	return out
}

// states is each entry's state, to tell what a round changed.
func states(entries map[types.NamespacedName]*aadv1.IdentityAssignment) map[types.NamespacedName]aadv1.AssignmentState {
	out := make(map[types.NamespacedName]aadv1.AssignmentState, len(entries))
	for key, e := range entries {
		out[key] = e.State
	}
	return out
}

// announce emits one event per kind of change a round made on the pool's
// record (assigned, failed, removed), naming the identities: a burst of
// pods costs a few events per pool instead of one per pod.
func (r *poolReconciler) announce(s *poolState, before map[types.NamespacedName]aadv1.AssignmentState, removed []*aadv1.IdentityAssignment) {
	if s.record == nil || r.recorder == nil {
		return
	}
	var assigned, failed []string
	var reasons []string
	for key, e := range s.entries {
		if before[key] == e.State {
			continue
		}
		switch e.State {
		case aadv1.StateAssigned:
			assigned = append(assigned, key.String())
		case aadv1.StateFailed:
			failed = append(failed, key.String())
			reasons = append(reasons, key.String()+": "+e.LastError)
		}
	}
	if len(assigned) > 0 {
		slices.Sort(assigned)
		r.recorder.Eventf(s.record, nil, corev1.EventTypeNormal, EventPoolAssigned, "Assign", "%d identities on %s: %s", len(assigned), s.pool.Name, summarize(assigned))
	}
	if len(failed) > 0 {
		slices.Sort(reasons)
		r.recorder.Eventf(s.record, nil, corev1.EventTypeWarning, EventPoolFailed, "Assign", "%d identities refused on %s: %s", len(failed), s.pool.Name, summarize(reasons))
	}
	if len(removed) > 0 {
		names := make([]string, 0, len(removed))
		for _, e := range removed {
			names = append(names, entryKey(e).String())
		}
		slices.Sort(names)
		r.recorder.Eventf(s.record, nil, corev1.EventTypeNormal, EventPoolRemoved, "Unassign", "%d identities removed from %s: %s", len(removed), s.pool.Name, summarize(names))
	}
}

// summarize keeps an event's note short: events are capped at 1 kB.
func summarize(items []string) string {
	const show = 5
	if len(items) <= show {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:show], ", "), len(items)-show)
}
