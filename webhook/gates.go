package webhook

import (
	"context"
	"fmt"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// gateReleaser lifts our scheduling gate from pods as they appear: in
// managed mode no assigner will. It watches unscheduled pods only (the
// manager's pod cache is restricted to them, see NewManager), so a pod
// admitted in standard mode is released on its own event rather than by a
// periodic list of every unscheduled pod from every replica.
type gateReleaser struct {
	reader client.Reader
	client client.Client
	log    logr.Logger
}

// addGateReleaser runs the releaser in every replica: the optimistic lock
// makes a second lift of the same pod a conflict, and the pod's next event
// shows the gate gone.
func addGateReleaser(mgr manager.Manager, log logr.Logger) error {
	return builder.ControllerManagedBy(mgr).
		Named("gate-releaser").
		For(&corev1.Pod{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			pod, ok := o.(*corev1.Pod)
			return ok && identity.HasGate(pod)
		}))).
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false), SkipNameValidation: ptr.To(true)}).
		Complete(&gateReleaser{reader: mgr.GetClient(), client: mgr.GetClient(), log: log})
}

// unscheduledPods is the manager's pod cache in managed mode: pods not yet
// scheduled, stripped to what the releaser reads and patches.
func unscheduledPods() cache.ByObject {
	return cache.ByObject{
		Field: fields.OneTermEqualSelector("spec.nodeName", ""),
		Transform: func(obj any) (any, error) {
			pod, ok := obj.(*corev1.Pod)
			if !ok {
				return obj, nil
			}
			return &corev1.Pod{
				TypeMeta:   pod.TypeMeta,
				ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, ResourceVersion: pod.ResourceVersion},
				Spec:       corev1.PodSpec{SchedulingGates: pod.Spec.SchedulingGates},
			}, nil
		},
	}
}

// Reconcile lifts the gate of one pod, if it still has it.
func (g *gateReleaser) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	pod := &corev1.Pod{}
	if err := g.reader.Get(ctx, req.NamespacedName, pod); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !identity.HasGate(pod) {
		return reconcile.Result{}, nil
	}
	orig := pod.DeepCopy()
	identity.RemoveGate(pod)
	err := g.client.Patch(ctx, pod, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	switch {
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		// Gone, or changed: a newer event brings it back if still gated.
		return reconcile.Result{}, nil
	case err != nil:
		return reconcile.Result{}, fmt.Errorf("lifting the scheduling gate of pod %s: %w", req.NamespacedName, err)
	}
	gatesLifted.Inc()
	g.log.Info("scheduling gate lifted: managed mode has no assigner", "pod", req.NamespacedName)
	return reconcile.Result{}, nil
}
