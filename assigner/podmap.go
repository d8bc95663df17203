package assigner

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// mapper finds the pods an event concerns.
type mapper struct {
	client         client.Client
	namespace      string
	crossNamespace bool
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
		for _, r := range requests(m.list(ctx, client.MatchingFields{podPoolIndex: strings.ToLower(rec.Spec.NodePool)}), func(p *corev1.Pod) bool {
			return slices.ContainsFunc(identity.Admitted(p), func(k types.NamespacedName) bool { return changed[k] })
		}) {
			q.Add(r)
		}
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

// changedEntries returns the AzureIdentities whose entries differ between
// two versions of a record, pod counts aside.
func changedEntries(old, rec *aadv1.AzureAssignedIdentity) map[types.NamespacedName]bool {
	changed := map[types.NamespacedName]bool{}
	was := map[types.NamespacedName]aadv1.IdentityAssignment{}
	for _, e := range old.Status.Identities {
		e.Pods = 0
		was[entryKey(&e)] = e
	}
	for _, e := range rec.Status.Identities {
		e.Pods = 0
		key := entryKey(&e)
		if w, ok := was[key]; !ok || !equality.Semantic.DeepEqual(w, e) {
			changed[key] = true
		}
		delete(was, key)
	}
	for key := range was {
		changed[key] = true
	}
	return changed
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
