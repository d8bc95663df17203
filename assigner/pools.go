package assigner

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// annotationUnneededSince marks, on an AzureAssignedIdentity, when the last
// pod that needed it went away; the grace period runs from there.
const annotationUnneededSince = aadv1.AnnotationPrefix + "unneeded-since"

// poolReconciler makes one pool's user-assigned identities match what its
// live pods need. It is the only writer of a pool, and requests are keyed
// by pool, so a burst of pods becomes one or two PATCHes.
type poolReconciler struct {
	client    client.Client
	arm       *ARM
	namespace string
	grace     time.Duration
	drift     time.Duration
	immutable map[string]bool // lower-cased client and resource IDs
	throttle  *throttle

	// batch is how long new work on a pool waits for more pods before the
	// first write, so that a burst fits in one PATCH.
	batch time.Duration

	mu        sync.Mutex
	failures  map[string]int         // consecutive transient ARM failures by pool
	lastDrift map[string]time.Time   // last retry of Failed records by pool
	lastRead  map[string]time.Time   // last successful GET of the pool
	newWork   map[string]batchWindow // pools with identities without record
}

// need is one identity the pool's live pods need.
type need struct {
	identity aadv1.AzureIdentity
	pods     int32
}

func (r *poolReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	pool, err := ParsePoolID(req.Name)
	if err != nil {
		log.FromContext(ctx).Error(err, "ignoring malformed pool")
		return ctrl.Result{}, nil
	}
	if wait := r.throttle.wait(pool.Subscription); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	needs, err := r.needs(ctx, pool)
	if err != nil {
		return ctrl.Result{}, err
	}
	records, err := r.records(ctx, pool)
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(needs) == 0 && len(records) == 0 {
		return ctrl.Result{}, nil // nothing of ours here: no need to ask ARM
	}
	unseen, err := r.unseenIdentities(ctx, needs)
	if err != nil {
		return ctrl.Result{}, err
	}
	if wait := r.batchWait(pool, needs, records, unseen, time.Now()); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	if left, ok := r.settled(pool, needs, records, time.Now()); ok {
		return ctrl.Result{RequeueAfter: left}, r.countPods(ctx, needs, records)
	}
	actual, err := r.arm.Get(ctx, pool)
	if err != nil {
		return r.armFailed(ctx, pool, records, err)
	}
	r.mu.Lock()
	r.lastRead[pool.Key()] = time.Now()
	r.mu.Unlock()
	// Ownership is recorded before any write, so a crash never loses it.
	if err := r.createRecords(ctx, pool, needs, records, actual); err != nil {
		return ctrl.Result{}, err
	}
	now := time.Now()
	retryFailed := r.driftDue(pool, now)
	add, remove, requeue, err := r.changes(ctx, needs, records, actual, now, retryFailed)
	if err != nil {
		return ctrl.Result{}, err
	}
	failed, err := r.write(ctx, pool, actual, records, add, remove)
	if err != nil {
		return r.armFailed(ctx, pool, records, err)
	}
	r.resetFailures(pool)
	if err := r.settle(ctx, needs, records, actual, remove, failed); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: min(requeue, r.drift)}, nil
}

// settled reports whether the pool needs no ARM call until its next drift
// check, and how long until then: every needed identity is recorded
// Assigned, no record waits for removal, and the pool was read less than a
// drift period ago. Pods coming and going on identities already in place
// then cost no ARM read (reads are throttled per subscription too).
func (r *poolReconciler) settled(pool Pool, needs map[types.NamespacedName]*need, records map[types.NamespacedName]*aadv1.AzureAssignedIdentity, now time.Time) (time.Duration, bool) {
	if len(records) != len(needs) {
		return 0, false
	}
	for key := range needs {
		rec := records[key]
		if rec == nil || rec.Status.Status != aadv1.StateAssigned {
			return 0, false
		}
		if _, ok := rec.Annotations[annotationUnneededSince]; ok {
			return 0, false
		}
	}
	r.mu.Lock()
	last, ok := r.lastRead[pool.Key()]
	r.mu.Unlock()
	left := last.Add(r.drift).Sub(now)
	return left, ok && left > 0
}

// countPods keeps each record's pod count current without touching ARM.
func (r *poolReconciler) countPods(ctx context.Context, needs map[types.NamespacedName]*need, records map[types.NamespacedName]*aadv1.AzureAssignedIdentity) error {
	keys := slices.Collect(maps.Keys(needs))
	return forEach(ctx, len(keys), func(ctx context.Context, i int) error {
		rec := records[keys[i]]
		status := rec.Status
		status.Pods = needs[keys[i]].pods
		return r.setStatus(ctx, rec, status)
	})
}

// batchWait returns how long to wait before writing. New identities for a
// pool are held until the burst has been seen: no pod the pod controller
// has yet to handle carries an identity the pool does not know (unseen),
// and none has appeared for a fifth of the batch window (pods still on
// their way to the cache). Never longer than the window from when the
// first one was seen. A burst's identities show up within milliseconds of
// each other, so waiting out a fixed window only delayed the PATCH.
func (r *poolReconciler) batchWait(pool Pool, needs map[types.NamespacedName]*need, records map[types.NamespacedName]*aadv1.AzureAssignedIdentity, unseen bool, now time.Time) time.Duration {
	fresh := 0
	for key := range needs {
		if records[key] == nil {
			fresh++
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if fresh == 0 || r.batch <= 0 {
		delete(r.newWork, pool.Key())
		return 0
	}
	w, ok := r.newWork[pool.Key()]
	if !ok {
		w.first = now
	}
	if fresh != w.fresh {
		w.fresh, w.last = fresh, now
	}
	end := w.first.Add(r.batch)
	if quiet := w.last.Add(r.batch / 5); !unseen && quiet.Before(end) {
		end = quiet
	}
	if left := end.Sub(now); left > 0 {
		r.newWork[pool.Key()] = w
		return left
	}
	delete(r.newWork, pool.Key())
	return 0
}

// unseenIdentities reports whether a live pod the pod controller has not
// handled yet carries a user-assigned identity missing from needs: it may
// target this pool, so its identity should go in the same PATCH.
func (r *poolReconciler) unseenIdentities(ctx context.Context, needs map[types.NamespacedName]*need) (bool, error) {
	var pods corev1.PodList
	if err := r.client.List(ctx, &pods, client.MatchingFields{podPoolIndex: untargeted}); err != nil {
		return false, fmt.Errorf("listing pods without target pools: %w", err)
	}
	for i := range pods.Items {
		if !isLive(&pods.Items[i]) {
			continue
		}
		for _, key := range identity.Admitted(&pods.Items[i]) {
			if needs[key] != nil {
				continue
			}
			var id aadv1.AzureIdentity
			if err := r.client.Get(ctx, key, &id); err != nil {
				if apierrors.IsNotFound(err) {
					continue
				}
				return false, fmt.Errorf("getting AzureIdentity %s: %w", key, err)
			}
			if id.Spec.Type == aadv1.UserAssignedMSI && id.Spec.ResourceID != "" {
				return true, nil
			}
		}
	}
	return false, nil
}

// batchWindow is a pool's pending burst: when its first new identity was
// seen, and when the count of new identities last changed.
type batchWindow struct {
	first, last time.Time
	fresh       int
}

// needs sums, per AzureIdentity, the live pods targeting pool.
func (r *poolReconciler) needs(ctx context.Context, pool Pool) (map[types.NamespacedName]*need, error) {
	var pods corev1.PodList
	if err := r.client.List(ctx, &pods, client.MatchingFields{podPoolIndex: pool.Key()}); err != nil {
		return nil, fmt.Errorf("listing pods of pool: %w", err)
	}
	needs := map[types.NamespacedName]*need{}
	missing := map[types.NamespacedName]bool{}
	for i := range pods.Items {
		if !isLive(&pods.Items[i]) {
			continue
		}
		for _, key := range identity.Admitted(&pods.Items[i]) {
			if n, ok := needs[key]; ok {
				n.pods++
				continue
			}
			if missing[key] {
				continue
			}
			var id aadv1.AzureIdentity
			if err := r.client.Get(ctx, key, &id); err != nil {
				if apierrors.IsNotFound(err) {
					missing[key] = true
					continue
				}
				return nil, fmt.Errorf("getting AzureIdentity %s: %w", key, err)
			}
			if id.Spec.Type != aadv1.UserAssignedMSI || id.Spec.ResourceID == "" {
				missing[key] = true
				continue
			}
			needs[key] = &need{identity: id, pods: 1}
		}
	}
	return needs, nil
}

// records returns the pool's AzureAssignedIdentities by identity key.
func (r *poolReconciler) records(ctx context.Context, pool Pool) (map[types.NamespacedName]*aadv1.AzureAssignedIdentity, error) {
	var list aadv1.AzureAssignedIdentityList
	if err := r.client.List(ctx, &list, client.InNamespace(r.namespace), client.MatchingFields{recordPoolIndex: pool.Key()}); err != nil {
		return nil, fmt.Errorf("listing AzureAssignedIdentities of pool: %w", err)
	}
	out := make(map[types.NamespacedName]*aadv1.AzureAssignedIdentity, len(list.Items))
	for i := range list.Items {
		rec := &list.Items[i]
		out[types.NamespacedName(rec.Spec.AzureIdentityRef)] = rec
	}
	return out, nil
}

func (r *poolReconciler) isImmutable(clientID, resourceID string) bool {
	return r.immutable[strings.ToLower(clientID)] || r.immutable[strings.ToLower(resourceID)]
}

// createRecords writes a record for every needed identity that has none.
// An identity already on the pool, or one we must never remove, is
// recorded external.
func (r *poolReconciler) createRecords(ctx context.Context, pool Pool, needs map[types.NamespacedName]*need, records map[types.NamespacedName]*aadv1.AzureAssignedIdentity, actual Actual) error {
	var missing []types.NamespacedName
	for key := range needs {
		if records[key] == nil {
			missing = append(missing, key)
		}
	}
	created := make([]*aadv1.AzureAssignedIdentity, len(missing))
	err := forEach(ctx, len(missing), func(ctx context.Context, i int) error {
		key, n := missing[i], needs[missing[i]]
		spec := n.identity.Spec
		rec := &aadv1.AzureAssignedIdentity{
			ObjectMeta: metav1.ObjectMeta{Namespace: r.namespace, Name: RecordName(key, pool)},
			Spec: aadv1.AzureAssignedIdentitySpec{
				AzureIdentityRef: aadv1.IdentityReference{Namespace: n.identity.Namespace, Name: n.identity.Name},
				ClientID:         spec.ClientID, ResourceID: spec.ResourceID, NodePool: pool.ID(),
			},
		}
		if err := r.client.Create(ctx, rec); err != nil {
			// The cache lags behind our own earlier create: retry with it.
			return fmt.Errorf("creating AzureAssignedIdentity %s: %w", rec.Name, err)
		}
		status := aadv1.AzureAssignedIdentityStatus{Status: aadv1.StateAssigning, Pods: n.pods}
		if actual.Has(spec.ResourceID) || r.isImmutable(spec.ClientID, spec.ResourceID) {
			status.External = true
		}
		if err := r.setStatus(ctx, rec, status); err != nil {
			return err
		}
		log.FromContext(ctx).Info("recorded assignment", "record", rec.Name, "identity", key, "external", status.External)
		created[i] = rec
		return nil
	})
	// Records written before a failure are kept, so the next round sees them.
	for i, rec := range created {
		if rec != nil {
			records[missing[i]] = rec
		}
	}
	return err
}

// changes returns the identities to add and remove now, and when the next
// removal falls due. It starts the grace period of records no pod needs.
func (r *poolReconciler) changes(ctx context.Context, needs map[types.NamespacedName]*need, records map[types.NamespacedName]*aadv1.AzureAssignedIdentity, actual Actual, now time.Time, retryFailed bool) (add, remove []*aadv1.AzureAssignedIdentity, requeue time.Duration, err error) {
	requeue = time.Duration(math.MaxInt64)
	stillNeeded := map[string]bool{}
	for key := range needs {
		stillNeeded[strings.ToLower(records[key].Spec.ResourceID)] = true
	}
	for key, rec := range records {
		if needs[key] != nil {
			if err := r.clearUnneeded(ctx, rec); err != nil {
				return nil, nil, 0, err
			}
			if !actual.Has(rec.Spec.ResourceID) && (rec.Status.Status != aadv1.StateFailed || retryFailed) {
				add = append(add, rec)
			}
			continue
		}
		since, err := r.unneededSince(ctx, rec, now)
		if err != nil {
			return nil, nil, 0, err
		}
		if left := since.Add(r.grace).Sub(now); left > 0 {
			requeue = min(requeue, left)
			continue
		}
		if !rec.Status.External && !r.isImmutable(rec.Spec.ClientID, rec.Spec.ResourceID) &&
			actual.Has(rec.Spec.ResourceID) && !stillNeeded[strings.ToLower(rec.Spec.ResourceID)] {
			remove = append(remove, rec)
			continue
		}
		if err := r.deleteRecord(ctx, rec); err != nil {
			return nil, nil, 0, err
		}
		delete(records, key)
	}
	return add, remove, requeue, nil
}

// write sends the planned patches. An identity ARM refuses by name is
// dropped from the batch and returned with the error, and the rest is
// sent again; any other error stops the writes.
func (r *poolReconciler) write(ctx context.Context, pool Pool, actual Actual, records map[types.NamespacedName]*aadv1.AzureAssignedIdentity, add, remove []*aadv1.AzureAssignedIdentity) (map[string]string, error) {
	for _, rec := range remove {
		if err := r.setStatus(ctx, rec, withState(rec.Status, aadv1.StateUnassigning, "")); err != nil {
			return nil, err
		}
	}
	failed := map[string]string{} // lower-cased resource ID → error
	addIDs := resourceIDs(add)
	for {
		err := r.writeOnce(ctx, pool, actual, addIDs, resourceIDs(remove))
		if err == nil {
			return failed, nil
		}
		bad := badIdentities(err, addIDs)
		if len(bad) == 0 {
			return failed, err
		}
		for _, id := range bad {
			failed[strings.ToLower(id)] = armErrorText(err)
			addIDs = slices.DeleteFunc(addIDs, func(s string) bool { return strings.EqualFold(s, id) })
		}
		assignmentFailures.Add(float64(len(bad)))
		log.FromContext(ctx).Info("ARM refused identities; sending the rest", "pool", pool.ID(), "refused", bad, "error", armErrorText(err))
	}
}

func (r *poolReconciler) writeOnce(ctx context.Context, pool Pool, actual Actual, add, remove []string) error {
	for _, p := range Plan(actual, add, remove) {
		log.FromContext(ctx).Info("patching pool", "pool", pool.ID(), "type", p.Type, "add", len(p.Add), "remove", len(p.Remove))
		if err := r.arm.Update(ctx, pool, p); err != nil {
			return err
		}
		for _, id := range p.Add {
			actual.UserAssigned[strings.ToLower(id)] = true
		}
		for _, id := range p.Remove {
			delete(actual.UserAssigned, strings.ToLower(id))
		}
	}
	return nil
}

// settle records the outcome: needed identities on the pool Assigned,
// refused ones Failed; records of removed identities are deleted.
func (r *poolReconciler) settle(ctx context.Context, needs map[types.NamespacedName]*need, records map[types.NamespacedName]*aadv1.AzureAssignedIdentity, actual Actual, removed []*aadv1.AzureAssignedIdentity, failed map[string]string) error {
	err := forEach(ctx, len(removed), func(ctx context.Context, i int) error {
		return r.deleteRecord(ctx, removed[i])
	})
	if err != nil {
		return err
	}
	keys := slices.Collect(maps.Keys(needs))
	return forEach(ctx, len(keys), func(ctx context.Context, i int) error {
		rec := records[keys[i]]
		status := rec.Status // a Failed record not retried this round stays so
		if msg, ok := failed[strings.ToLower(rec.Spec.ResourceID)]; ok {
			status = withState(rec.Status, aadv1.StateFailed, msg)
		} else if actual.Has(rec.Spec.ResourceID) {
			status = withState(rec.Status, aadv1.StateAssigned, "")
		}
		status.Pods = needs[keys[i]].pods
		return r.setStatus(ctx, rec, status)
	})
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

// armFailed handles an ARM error that stopped the round: a 429 pauses
// every request to the subscription for Retry-After; anything else (5xx,
// 409, timeouts) backs off per pool with jitter. The error is kept on the
// records still waiting.
func (r *poolReconciler) armFailed(ctx context.Context, pool Pool, records map[types.NamespacedName]*aadv1.AzureAssignedIdentity, err error) (ctrl.Result, error) {
	text := armErrorText(err)
	for _, rec := range records {
		if rec.Status.Status == aadv1.StateAssigning || rec.Status.Status == aadv1.StateUnassigning {
			if serr := r.setStatus(ctx, rec, withState(rec.Status, rec.Status.Status, text)); serr != nil {
				return ctrl.Result{}, serr
			}
		}
	}
	if wait, ok := retryAfter(err, time.Now()); ok {
		armThrottled.Inc()
		r.throttle.pause(pool.Subscription, wait)
		log.FromContext(ctx).Info("ARM throttled; pausing the subscription", "pool", pool.ID(), "retryAfter", wait)
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	r.mu.Lock()
	n := r.failures[pool.Key()]
	r.failures[pool.Key()] = n + 1
	r.mu.Unlock()
	delay := wait.Jitter(min(time.Duration(1<<min(n, 10))*r.baseBackoff(), r.drift), 0.5)
	log.FromContext(ctx).Info("ARM request failed; backing off", "pool", pool.ID(), "error", text, "backoff", delay)
	return ctrl.Result{RequeueAfter: delay}, nil
}

func (r *poolReconciler) baseBackoff() time.Duration { return 500 * time.Millisecond }

func (r *poolReconciler) resetFailures(pool Pool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.failures, pool.Key())
}

// driftDue reports whether a drift period has passed since the pool's
// Failed records were last retried, and restarts the period if so.
func (r *poolReconciler) driftDue(pool Pool, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	last, ok := r.lastDrift[pool.Key()]
	if ok && now.Sub(last) < r.drift {
		return false
	}
	r.lastDrift[pool.Key()] = now
	return ok
}

func (r *poolReconciler) unneededSince(ctx context.Context, rec *aadv1.AzureAssignedIdentity, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, rec.Annotations[annotationUnneededSince]); err == nil {
		return t, nil
	}
	orig := rec.DeepCopy()
	metav1.SetMetaDataAnnotation(&rec.ObjectMeta, annotationUnneededSince, now.UTC().Format(time.RFC3339Nano))
	if err := r.client.Patch(ctx, rec, client.MergeFrom(orig)); err != nil {
		return now, fmt.Errorf("marking AzureAssignedIdentity %s unneeded: %w", rec.Name, err)
	}
	return now, nil
}

func (r *poolReconciler) clearUnneeded(ctx context.Context, rec *aadv1.AzureAssignedIdentity) error {
	if _, ok := rec.Annotations[annotationUnneededSince]; !ok {
		return nil
	}
	orig := rec.DeepCopy()
	delete(rec.Annotations, annotationUnneededSince)
	if err := r.client.Patch(ctx, rec, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("marking AzureAssignedIdentity %s needed: %w", rec.Name, err)
	}
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

func resourceIDs(recs []*aadv1.AzureAssignedIdentity) []string {
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.Spec.ResourceID)
	}
	return out
}

// throttle remembers, per scope (subscription), until when ARM asked us to
// make no request.
type throttle struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (t *throttle) pause(scope string, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if u := time.Now().Add(d); u.After(t.until[scope]) {
		t.until[scope] = u
	}
}

func (t *throttle) wait(scope string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return time.Until(t.until[scope])
}
