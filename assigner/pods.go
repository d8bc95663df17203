package assigner

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// Event reasons. A pod gets an event only when its assignment fails; the
// progress of a burst is told once per pool round on the pool's record,
// since an event per pod would double the API writes of a burst.
const (
	EventFailed       = "IdentityAssignmentFailed" // on the pod
	EventPoolAssigned = "IdentitiesAssigned"       // on the pool's record
	EventPoolFailed   = "IdentitiesRefused"        // on the pool's record
	EventPoolRemoved  = "IdentitiesRemoved"        // on the pool's record
)

// podReconciler keeps an admitted pod's identity annotations true, chooses
// its target pools and lifts its gate once every identity is on them.
type podReconciler struct {
	client    client.Client
	resolver  *identity.Resolver
	recorder  events.EventRecorder
	namespace string
	// crossNamespace: bindings select pods in every namespace, so binding
	// and identity events concern them all.
	crossNamespace bool
	// nmi: identities go only onto pools of nodes where NMI runs.
	nmi         nodepool.Coverage
	clock       clock.PassiveClock
	recordNames recordNames
}

func (r *podReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var pod corev1.Pod
	if err := r.client.Get(ctx, req.NamespacedName, &pod); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !identity.Live(&pod) {
		return ctrl.Result{}, nil
	}
	if _, admitted := pod.Annotations[aadv1.AnnotationIdentities]; !admitted {
		// Neither admitted by the webhook nor adopted by it (pods created
		// before it): nothing may be resolved for it here, else any pod
		// that slipped past admission would get identities.
		log.FromContext(ctx).V(1).Info("pod not admitted by the webhook; ignored")
		return ctrl.Result{}, nil
	}
	res, err := r.resolver.Resolve(ctx, pod.Namespace, pod.Labels[aadv1.BindingLabel])
	if err != nil {
		return ctrl.Result{}, err
	}
	var userAssigned []identity.Resolved
	for _, id := range res.Identities {
		if id.OnPools() {
			userAssigned = append(userAssigned, id)
		}
	}
	var pools []nodepool.Pool
	var poolErr error
	if len(userAssigned) > 0 {
		var nodes corev1.NodeList
		// Only read (nodepool.Targets), for every pod of a burst.
		if err := r.client.List(ctx, &nodes, client.UnsafeDisableDeepCopy); err != nil {
			return ctrl.Result{}, fmt.Errorf("listing nodes: %w", err)
		}
		pools, poolErr = nodepool.Targets(&pod, nodes.Items, r.nmi)
	}
	assignment := r.assignment(ctx, userAssigned, pools, poolErr)
	return ctrl.Result{}, r.update(ctx, &pod, res, pools, assignment)
}

// SetupWithManager registers the pod controller: besides its pods, node,
// record, binding and identity events enqueue the pods they concern.
func (r *podReconciler) SetupWithManager(mgr ctrl.Manager) error {
	m := mapper{client: r.client, namespace: r.namespace, crossNamespace: r.crossNamespace, recordNames: &r.recordNames}
	err := ctrl.NewControllerManagedBy(mgr).Named("pod").
		For(&corev1.Pod{}).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(m.unassignedPods), builder.WithPredicates(nodeChanged())).
		Watches(&aadv1.AzureAssignedIdentity{}, m.recordPods()).
		Watches(&aadv1.AzureIdentityBinding{}, handler.EnqueueRequestsFromMapFunc(m.bindingPods)).
		Watches(&aadv1.AzureIdentity{}, handler.EnqueueRequestsFromMapFunc(m.identityPods)).
		WithOptions(controller.Options{MaxConcurrentReconciles: 16}). // mostly waiting on API writes
		Complete(r)
	if err != nil {
		return fmt.Errorf("creating pod controller: %w", err)
	}
	return nil
}

// assignment is the pod's assignment annotation: Assigned once every
// identity's entry on every target pool is Assigned for the client and
// resource ID the AzureIdentity names now.
func (r *podReconciler) assignment(ctx context.Context, identities []identity.Resolved, pools []nodepool.Pool, poolErr error) string {
	if poolErr != nil {
		return aadv1.AssignmentFailedPrefix + poolErr.Error()
	}
	state := aadv1.AssignmentAssigned
	for _, p := range pools {
		var rec aadv1.AzureAssignedIdentity
		if err := r.client.Get(ctx, client.ObjectKey{Namespace: r.namespace, Name: r.recordNames.of(p)}, &rec); err != nil {
			state = aadv1.AssignmentPending
			continue
		}
		for _, id := range identities {
			e := rec.Status.Find(id.Namespace, id.Name)
			switch {
			case e == nil || !identity.SamePairing(e, id.ClientID, id.ResourceID):
				state = aadv1.AssignmentPending // not recorded yet, or being re-paired
			case e.State == aadv1.StateFailed:
				// Not e.LastError: ARM's answer stays in the record and the log.
				return fmt.Sprintf("%sidentity %s on %s (%s): %s", aadv1.AssignmentFailedPrefix, id.Key(), p.Name, identity.ReasonAssignmentFailed, identity.FailedAssignmentHint)
			case e.State != aadv1.StateAssigned:
				state = aadv1.AssignmentPending
			}
		}
	}
	return state
}

func (r *podReconciler) update(ctx context.Context, pod *corev1.Pod, res identity.Resolution, pools []nodepool.Pool, assignment string) error {
	orig := pod.DeepCopy()
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	for k, v := range res.Annotations() {
		pod.Annotations[k] = v
	}
	pod.Annotations[aadv1.AnnotationNodePools] = nodepool.JoinIDs(pools)
	pod.Annotations[aadv1.AnnotationAssignment] = assignment
	liftGate := assignment == aadv1.AssignmentAssigned && identity.HasGate(pod)
	if liftGate {
		identity.RemoveGate(pod)
		pod.Annotations[aadv1.AnnotationIdentitiesReadyAt] = r.clock.Now().UTC().Format(time.RFC3339)
	}
	previous := orig.Annotations[aadv1.AnnotationAssignment]
	if !liftGate && previous == assignment && maps.Equal(orig.Annotations, pod.Annotations) {
		return nil
	}
	if err := r.client.Patch(ctx, pod, client.MergeFrom(orig)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("updating pod: %w", err)
	}
	log.FromContext(ctx).Info("pod updated", "assignment", assignment, "pools", pod.Annotations[aadv1.AnnotationNodePools], "identities", pod.Annotations[aadv1.AnnotationIdentities], "gateLifted", liftGate)
	if liftGate {
		podReady.Observe(time.Since(pod.CreationTimestamp.Time).Seconds())
	}
	if previous != assignment && strings.HasPrefix(assignment, aadv1.AssignmentFailedPrefix) {
		r.recorder.Eventf(pod, nil, corev1.EventTypeWarning, EventFailed, "Assign", "%s", assignment)
	}
	return nil
}
