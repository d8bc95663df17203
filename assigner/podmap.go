package assigner

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
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
	if err := m.client.List(ctx, &pods, opts...); err != nil {
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

// recordPods: pods waiting for this identity on this pool.
func (m mapper) recordPods(ctx context.Context, obj client.Object) []reconcile.Request {
	rec := obj.(*aadv1.AzureAssignedIdentity)
	ref := identityKey(rec)
	return requests(m.list(ctx, client.MatchingFields{podPoolIndex: strings.ToLower(rec.Spec.NodePool)}), func(p *corev1.Pod) bool {
		return slices.Contains(identity.Admitted(p), ref)
	})
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
