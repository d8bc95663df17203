package assigner

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// poolReconciler makes one pool's user-assigned identities match what its
// live pods need. It is the only writer of a pool, and requests are keyed
// by pool, so a burst of pods becomes one or two PATCHes.
//
// A round gathers the pool's state from the cache, lets the pacer hold it
// back (throttling, batch window, settled pool), reads the pool from ARM,
// records ownership, decides the changes and applies them.
type poolReconciler struct {
	client client.Client
	// tally counts the pools' pods, from the pod events.
	tally     *podTally
	arm       poolARM
	namespace string
	policy    poolPolicy
	pacer     *pacer
	clock     clock.PassiveClock // the pacer's, for decide's now
	written   *writtenRecords
	recorder  events.EventRecorder
	workers   int
	// legacyBefore: 1.x's records created since prove nothing.
	legacyBefore time.Time
}

func newPoolReconciler(c client.Client, tally *podTally, recorder events.EventRecorder, opts Options) *poolReconciler {
	immutable := map[string]bool{}
	for _, id := range opts.Immutable {
		if id = strings.TrimSpace(id); id != "" {
			immutable[aadv1.IDKey(id)] = true
		}
	}
	clk := opts.clock()
	return &poolReconciler{
		client:    c,
		tally:     tally,
		arm:       opts.ARM,
		namespace: opts.Namespace,
		policy:    poolPolicy{grace: opts.GCGracePeriod, drift: opts.DriftCheckPeriod, immutable: immutable},
		pacer:     newPacer(clk, opts.BatchWindow, opts.DriftCheckPeriod),
		clock:     clk,
		written:   &writtenRecords{clock: clk, pools: map[string]written{}},
		recorder:  recorder,
		workers:   cmp.Or(opts.MaxConcurrentPools, 8),

		legacyBefore: opts.LegacyEvidenceBefore,
	}
}

func (r *poolReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	pool, err := nodepool.ParseID(req.Name)
	if err != nil {
		log.FromContext(ctx).Error(err, "ignoring malformed pool")
		return ctrl.Result{}, nil
	}
	if wait := r.pacer.throttled(pool.Subscription); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	s, err := r.gather(ctx, pool)
	if err != nil {
		return ctrl.Result{}, err
	}
	if s.empty() {
		return ctrl.Result{}, nil // nothing of ours here: no need to ask ARM
	}
	if wait := r.pacer.batchWait(pool.Key(), s.unrecorded(), s.unseen); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	// Pods coming and going on identities already in place cost no ARM
	// read until the next drift check (reads are throttled per
	// subscription too).
	if left, ok := r.pacer.untilDriftCheck(pool.Key()); ok && s.inPlace() {
		if !s.countsChanged() {
			return ctrl.Result{RequeueAfter: left}, nil
		}
		if wait := r.pacer.countsDue(pool.Key()); wait > 0 {
			return ctrl.Result{RequeueAfter: min(left, wait)}, nil
		}
		for key, w := range s.wanted {
			s.entries[key].Pods = w.pods
		}
		return ctrl.Result{RequeueAfter: left}, r.flush(ctx, s)
	}
	if s.actual, err = r.arm.Get(ctx, pool); err != nil {
		return r.armFailed(ctx, s, err)
	}
	r.pacer.poolRead(pool.Key())
	// Ownership is recorded (by apply's first flush) before any write, so
	// a crash never loses it.
	if err := r.recordWanted(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	retryFailed := r.pacer.retryFailedDue(pool.Key())
	return r.apply(ctx, s, decide(s, r.policy, r.clock.Now(), retryFailed))
}

// SetupWithManager registers the pool controller: pods whose targets or
// identities change, records created or deleted, and AzureIdentities
// edited (to re-pair their entries) enqueue their pools.
func (r *poolReconciler) SetupWithManager(mgr ctrl.Manager) error {
	err := ctrl.NewControllerManagedBy(mgr).Named("pool").
		Watches(&corev1.Pod{}, r.podEvents(), builder.WithPredicates(podTargetsChanged())).
		Watches(&aadv1.AzureAssignedIdentity{}, handler.EnqueueRequestsFromMapFunc(recordToPool), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&aadv1.AzureIdentity{}, handler.EnqueueRequestsFromMapFunc(r.identityPools), builder.WithPredicates(
			// The annotation: an identity turned federated leaves the pools.
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.workers}).
		Complete(r)
	if err != nil {
		return fmt.Errorf("creating pool controller: %w", err)
	}
	return nil
}

// podEvents counts the pod in the tally, then enqueues the pools it
// targets: the round then sees it counted.
func (r *poolReconciler) podEvents() handler.EventHandler {
	enqueue := handler.EnqueueRequestsFromMapFunc(podToPools)
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.tally.observe(e.Object.(*corev1.Pod))
			enqueue.Create(ctx, e, q)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.tally.observe(e.ObjectNew.(*corev1.Pod))
			enqueue.Update(ctx, e, q)
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.tally.forget(client.ObjectKeyFromObject(e.Object))
			enqueue.Delete(ctx, e, q)
		},
	}
}

func podToPools(_ context.Context, obj client.Object) []reconcile.Request {
	var out []reconcile.Request
	for _, id := range strings.Split(obj.GetAnnotations()[aadv1.AnnotationNodePools], ",") {
		if id != "" {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: id}})
		}
	}
	return out
}

func recordToPool(_ context.Context, obj client.Object) []reconcile.Request {
	if isLegacy(obj) {
		return nil // 1.x's, for the legacy reaper
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: obj.(*aadv1.AzureAssignedIdentity).Spec.NodePool}}}
}

// identityPools: the pools whose records have an entry for the AzureIdentity.
func (r *poolReconciler) identityPools(ctx context.Context, obj client.Object) []reconcile.Request {
	var list aadv1.AzureAssignedIdentityList
	key := client.ObjectKeyFromObject(obj).String()
	if err := r.client.List(ctx, &list, client.InNamespace(r.namespace), client.MatchingFields{recordIdentityIndex: key}); err != nil {
		log.FromContext(ctx).Error(err, "listing AzureAssignedIdentities of identity", "identity", key)
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, recordToPool(ctx, &list.Items[i])...)
	}
	return out
}

// podTargetsChanged passes pod events that change what a pool needs.
func podTargetsChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*corev1.Pod), e.ObjectNew.(*corev1.Pod)
		return o.Annotations[aadv1.AnnotationNodePools] != n.Annotations[aadv1.AnnotationNodePools] ||
			o.Annotations[aadv1.AnnotationIdentities] != n.Annotations[aadv1.AnnotationIdentities] ||
			identity.Live(o) != identity.Live(n)
	}}
}
