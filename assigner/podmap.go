package assigner

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// mapper finds the pods an event concerns.
type mapper struct {
	client         client.Client
	namespace      string
	crossNamespace bool
	recordNames    *recordNames
}

// recordNames memoizes identity.RecordName: a hash per pool and pod of
// every pod reconcile and record event otherwise (50 pools per pod at
// 10,000 pods).
type recordNames struct {
	byPool sync.Map
}

func (n *recordNames) of(pool nodepool.Pool) string {
	if name, ok := n.byPool.Load(pool); ok {
		return name.(string)
	}
	name := identity.RecordName(pool)
	n.byPool.Store(pool, name)
	return name
}

func requests(pods []corev1.Pod, keep func(*corev1.Pod) bool) []reconcile.Request {
	var out []reconcile.Request
	for i := range pods {
		if keep(&pods[i]) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: pods[i].Namespace, Name: pods[i].Name}})
		}
	}
	return out
}

func (m mapper) list(ctx context.Context, opts ...client.ListOption) []corev1.Pod {
	var pods corev1.PodList
	// Only read: a record's event may concern every pod of its pool.
	if err := m.client.List(ctx, &pods, append(opts, client.UnsafeDisableDeepCopy)...); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing pods")
		return nil
	}
	return pods.Items
}

// unassignedPods: a node change may give pending pods new target pools.
func (m mapper) unassignedPods(ctx context.Context, node client.Object) []reconcile.Request {
	return requests(m.list(ctx), func(p *corev1.Pod) bool {
		return p.Annotations[aadv1.AnnotationAssignment] != aadv1.AssignmentAssigned || p.Spec.NodeName == node.GetName()
	})
}

// recordPods handles a pool record's events: the pods of its pool whose
// identities' entries changed (state, pairing, error) are enqueued, not
// every pod of the pool, as a record changes with every round of a burst.
func (m mapper) recordPods() handler.EventHandler {
	enqueue := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], old, rec *aadv1.AzureAssignedIdentity) {
		changed := changedEntries(old, rec)
		if len(changed) == 0 {
			return
		}
		pool := aadv1.IDKey(rec.Spec.NodePool)
		// Only what orders them is kept of the pods: every pod of the pool
		// when its last round assigns every entry.
		var found []queuedPod
		seen := map[types.NamespacedName]bool{} // a pod of several changed entries
		for key := range changed {
			pods := m.list(ctx, client.MatchingFields{podIdentityIndex: key.String()})
			for i := range pods {
				p := &pods[i]
				name := client.ObjectKeyFromObject(p)
				if seen[name] || !targets(p, pool) {
					continue
				}
				seen[name] = true
				if p.Annotations[aadv1.AnnotationAssignment] == aadv1.AssignmentAssigned || !m.waitsElsewhere(ctx, p, rec) {
					found = append(found, queuedPod{name: name, created: p.CreationTimestamp, resourceVersion: p.ResourceVersion})
				}
			}
		}
		// Oldest first: the workqueue keeps this order, so the pods that
		// waited longest have their gates lifted first.
		slices.SortFunc(found, olderFirst)
		reqs := make([]reconcile.Request, 0, len(found))
		for _, p := range found {
			reqs = append(reqs, reconcile.Request{NamespacedName: p.name})
		}
		addAhead(q, reqs)
	}
	none := &aadv1.AzureAssignedIdentity{}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, none, e.Object.(*aadv1.AzureAssignedIdentity))
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, e.ObjectOld.(*aadv1.AzureAssignedIdentity), e.ObjectNew.(*aadv1.AzureAssignedIdentity))
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			rec, ok := e.Object.(*aadv1.AzureAssignedIdentity)
			if !ok {
				return // a tombstone: the pods are checked again when they change
			}
			enqueue(ctx, q, rec, &aadv1.AzureAssignedIdentity{Spec: rec.Spec})
		},
	}
}

// queuedPod is a pod a record's change enqueues, and what orders it.
type queuedPod struct {
	name            types.NamespacedName
	created         metav1.Time
	resourceVersion string
}

// olderFirst orders pods by creation and, within the second that
// creationTimestamp resolves (a burst creates hundreds), by resourceVersion:
// until its gate is lifted a pod is written only at its creation and by the
// scheduler's SchedulingGated condition, which follows the same order.
func olderFirst(a, b queuedPod) int {
	if c := a.created.Compare(b.created.Time); c != 0 {
		return c
	}
	c, err := resourceversion.CompareResourceVersion(a.resourceVersion, b.resourceVersion)
	if err != nil {
		return 0 // not an apiserver's: no order known
	}
	return c
}

// recordPriority ranks the pods a record's change concerns ahead of pod
// events: in a burst, the reconciles of the pods just created (which only
// confirm them pending) would otherwise delay the gates a PATCH has just made
// liftable, the first pod's among them. The oldest of them rank up to
// ageLevels-1 higher: a pod already queued keeps its place within a level,
// so with one level the burst's newest pods, still queued from their
// creation, would go before the oldest. A few levels bound the queue's
// per-priority metrics.
const (
	recordPriority = 1
	ageLevels      = 4
)

// addAhead enqueues reqs, oldest first, above pod events on
// controller-runtime's priority queue (the default), in order on any other.
func addAhead(q workqueue.TypedRateLimitingInterface[reconcile.Request], reqs []reconcile.Request) {
	pq, ok := q.(priorityqueue.PriorityQueue[reconcile.Request])
	if !ok {
		for _, r := range reqs {
			q.Add(r)
		}
		return
	}
	for level := range ageLevels {
		from, to := len(reqs)*level/ageLevels, len(reqs)*(level+1)/ageLevels
		if from < to {
			pq.AddWithOpts(priorityqueue.AddOpts{Priority: ptr.To(recordPriority + ageLevels - 1 - level)}, reqs[from:to]...)
		}
	}
}

// waitsElsewhere reports whether a pod not yet assigned still waits for
// one of its identities on another of its pools: that pool's record brings
// it back when it changes. Re-enqueueing it for every pool would put the
// oldest pods at the back of the queue when the last pool completes.
func (m mapper) waitsElsewhere(ctx context.Context, pod *corev1.Pod, rec *aadv1.AzureAssignedIdentity) bool {
	// Not lower-cased: doing so to a 50-pool annotation for every pod of
	// every record event was most of the CPU of a 10k-pod burst.
	for _, id := range strings.Split(pod.Annotations[aadv1.AnnotationNodePools], ",") {
		if id == "" || aadv1.SameID(id, rec.Spec.NodePool) {
			continue
		}
		pool, err := nodepool.ParseID(id)
		if err != nil {
			return false
		}
		name := m.recordNames.of(pool)
		var other aadv1.AzureAssignedIdentity
		if err := m.client.Get(ctx, client.ObjectKey{Namespace: m.namespace, Name: name}, &other); err != nil {
			return apierrors.IsNotFound(err)
		}
		for _, key := range identity.Admitted(pod) {
			// Only user-assigned identities have entries: those with one
			// in this pool's record.
			if rec.Status.Find(key.Namespace, key.Name) != nil && verdict(other.Status.Find(key.Namespace, key.Name)) == verdict(nil) {
				return true
			}
		}
	}
	return false
}

// changedEntries returns the AzureIdentities whose entries tell a pod
// something else in the new version of a record than in the old: a new
// entry, still Assigning, leaves its pods pending as no entry did, so the
// write that records ownership before a PATCH enqueues no pod.
func changedEntries(old, rec *aadv1.AzureAssignedIdentity) map[types.NamespacedName]bool {
	changed := map[types.NamespacedName]bool{}
	was := map[types.NamespacedName]string{}
	for i := range old.Status.Identities {
		was[entryKey(&old.Status.Identities[i])] = verdict(&old.Status.Identities[i])
	}
	for i := range rec.Status.Identities {
		e := &rec.Status.Identities[i]
		key := entryKey(e)
		if v := verdict(e); v != cmp.Or(was[key], verdict(nil)) {
			changed[key] = true
		}
		delete(was, key)
	}
	for key, v := range was {
		if v != verdict(nil) {
			changed[key] = true
		}
	}
	return changed
}

// verdict is what an entry (nil: none) tells the pod controller: pending,
// or Assigned or Failed with what the pod's assignment depends on.
func verdict(e *aadv1.IdentityAssignment) string {
	switch {
	case e == nil || (e.State != aadv1.StateAssigned && e.State != aadv1.StateFailed):
		return "pending"
	case e.State == aadv1.StateFailed:
		return "failed " + e.LastError
	default:
		return "assigned " + e.ClientID + " " + e.ResourceID
	}
}

// bindingPods: pods whose label the binding's selector matches.
func (m mapper) bindingPods(ctx context.Context, obj client.Object) []reconcile.Request {
	b := obj.(*aadv1.AzureIdentityBinding)
	opts := []client.ListOption{client.MatchingLabels{aadv1.BindingLabel: b.Spec.Selector}}
	if !m.crossNamespace {
		opts = append(opts, client.InNamespace(b.Namespace))
	}
	return requests(m.list(ctx, opts...), func(*corev1.Pod) bool { return true })
}

// identityPods: labelled pods that may resolve to the identity.
func (m mapper) identityPods(ctx context.Context, obj client.Object) []reconcile.Request {
	var opts []client.ListOption
	if !m.crossNamespace {
		opts = append(opts, client.InNamespace(obj.GetNamespace()))
	}
	return requests(m.list(ctx, opts...), func(*corev1.Pod) bool { return true })
}

// nodeChanged passes node events that can change a pod's target pools.
func nodeChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*corev1.Node), e.ObjectNew.(*corev1.Node)
		return !maps.Equal(o.Labels, n.Labels) || o.Spec.ProviderID != n.Spec.ProviderID || fmt.Sprint(o.Spec.Taints) != fmt.Sprint(n.Spec.Taints)
	}}
}
