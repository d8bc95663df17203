package assigner

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// Field indexes of the assigner's cache.
const (
	podPoolIndex    = "assigner.pools"
	recordPoolIndex = "spec.nodePool"
	// untargeted is the podPoolIndex value of pods the pod controller has
	// not handled yet (no node-pools annotation): pool batches wait for
	// their identities.
	untargeted = "untargeted"
)

// Options configure the assigner's controllers.
type Options struct {
	// Namespace holds the AzureAssignedIdentity records.
	Namespace string
	ARM       *ARM
	// GCGracePeriod is how long an identity no live pod needs stays on a pool.
	GCGracePeriod time.Duration
	// DriftCheckPeriod is how often pools are re-read and vanished
	// identities re-added (and refused ones retried).
	DriftCheckPeriod time.Duration
	// BatchWindow is the longest the first write of new identities to a
	// pool waits so that the pods of a burst share one PATCH; the write
	// starts once every pod seen has been handled and no new identity has
	// appeared for BatchWindow/5.
	BatchWindow time.Duration
	// Immutable identities (client or resource IDs) are never removed.
	Immutable           []string
	AllowCrossNamespace bool
}

// ManagerOptions configure the process around the controllers.
type ManagerOptions struct {
	MetricsAddr, ProbeAddr  string
	LeaderElect             bool
	LeaderElectionNamespace string
	// QPS and Burst limit requests to the API server (0: 100 and 200).
	// client-go's default of 20 would make a burst of pods wait on the
	// client, not on ARM.
	QPS   float32
	Burst int
}

// NewManager builds a manager running the assigner; the caller starts it.
func NewManager(cfg *rest.Config, mo ManagerOptions, opts Options) (manager.Manager, error) {
	labelled, err := labels.NewRequirement(aadv1.BindingLabel, selection.Exists, nil)
	if err != nil {
		return nil, err
	}
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 100, 200
	if mo.QPS > 0 {
		cfg.QPS = mo.QPS
	}
	if mo.Burst > 0 {
		cfg.Burst = mo.Burst
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  identity.Scheme(),
		Metrics:                 metricsserver.Options{BindAddress: mo.MetricsAddr},
		HealthProbeBindAddress:  mo.ProbeAddr,
		LeaderElection:          mo.LeaderElect,
		LeaderElectionID:        "aad-pod-identity-assigner",
		LeaderElectionNamespace: mo.LeaderElectionNamespace,
		// Only labelled pods concern us; caching the rest would cost memory.
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{&corev1.Pod{}: {Label: labels.NewSelector().Add(*labelled)}}},
		// A restarted manager in the same process (tests) reuses the names.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, fmt.Errorf("adding health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return nil, fmt.Errorf("adding ready check: %w", err)
	}
	if err := Setup(context.Background(), mgr, opts); err != nil {
		return nil, err
	}
	return mgr, nil
}

// RBAC of the assigner (config/rbac/assigner, generated).
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;patch;update
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureidentities;azureidentitybindings,verbs=get;list;watch
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureassignedidentities,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureassignedidentities/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete

// Setup registers the indexes and the pod and pool controllers.
func Setup(ctx context.Context, mgr manager.Manager, opts Options) error {
	if opts.ARM == nil || opts.Namespace == "" || opts.GCGracePeriod <= 0 || opts.DriftCheckPeriod <= 0 {
		return fmt.Errorf("assigner options need an ARM client, a namespace and positive periods")
	}
	resolver, err := identity.NewResolver(ctx, mgr.GetCache(), nil, opts.AllowCrossNamespace)
	if err != nil {
		return err
	}
	indexer := mgr.GetFieldIndexer()
	if err := indexer.IndexField(ctx, &corev1.Pod{}, podPoolIndex, func(o client.Object) []string {
		pod := o.(*corev1.Pod)
		if _, ok := pod.Annotations[aadv1.AnnotationNodePools]; !ok {
			return []string{untargeted}
		}
		return podPools(pod)
	}); err != nil {
		return fmt.Errorf("indexing pods by pool: %w", err)
	}
	if err := indexer.IndexField(ctx, &aadv1.AzureAssignedIdentity{}, recordPoolIndex, func(o client.Object) []string {
		return []string{strings.ToLower(o.(*aadv1.AzureAssignedIdentity).Spec.NodePool)}
	}); err != nil {
		return fmt.Errorf("indexing records by pool: %w", err)
	}

	immutable := map[string]bool{}
	for _, id := range opts.Immutable {
		if id = strings.TrimSpace(id); id != "" {
			immutable[strings.ToLower(id)] = true
		}
	}
	c := mgr.GetClient()
	pods := &podReconciler{
		client:    c,
		resolver:  resolver,
		recorder:  mgr.GetEventRecorderFor("aad-pod-identity-assigner"),
		namespace: opts.Namespace,
	}
	m := mapper{client: c, namespace: opts.Namespace, crossNamespace: opts.AllowCrossNamespace}
	err = ctrl.NewControllerManagedBy(mgr).Named("pod").
		For(&corev1.Pod{}).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(m.unassignedPods), builder.WithPredicates(nodeChanged())).
		Watches(&aadv1.AzureAssignedIdentity{}, handler.EnqueueRequestsFromMapFunc(m.recordPods)).
		Watches(&aadv1.AzureIdentityBinding{}, handler.EnqueueRequestsFromMapFunc(m.bindingPods)).
		Watches(&aadv1.AzureIdentity{}, handler.EnqueueRequestsFromMapFunc(m.identityPods)).
		WithOptions(controller.Options{MaxConcurrentReconciles: 16}). // mostly waiting on API writes
		Complete(pods)
	if err != nil {
		return fmt.Errorf("creating pod controller: %w", err)
	}
	pools := &poolReconciler{
		client: c, arm: opts.ARM, namespace: opts.Namespace,
		grace: opts.GCGracePeriod, drift: opts.DriftCheckPeriod, immutable: immutable,
		throttle: &throttle{until: map[string]time.Time{}},
		batch:    opts.BatchWindow,
		failures: map[string]int{}, lastDrift: map[string]time.Time{}, lastRead: map[string]time.Time{}, newWork: map[string]batchWindow{},
	}
	err = ctrl.NewControllerManagedBy(mgr).Named("pool").
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(podToPools), builder.WithPredicates(podTargetsChanged())).
		Watches(&aadv1.AzureAssignedIdentity{}, handler.EnqueueRequestsFromMapFunc(recordToPool), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: 8}).
		Complete(pools)
	if err != nil {
		return fmt.Errorf("creating pool controller: %w", err)
	}
	return nil
}

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
	ref := types.NamespacedName(rec.Spec.AzureIdentityRef)
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
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: obj.(*aadv1.AzureAssignedIdentity).Spec.NodePool}}}
}

// podTargetsChanged passes pod events that change what a pool needs.
func podTargetsChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*corev1.Pod), e.ObjectNew.(*corev1.Pod)
		return o.Annotations[aadv1.AnnotationNodePools] != n.Annotations[aadv1.AnnotationNodePools] ||
			o.Annotations[aadv1.AnnotationIdentities] != n.Annotations[aadv1.AnnotationIdentities] ||
			isLive(o) != isLive(n)
	}}
}

// nodeChanged passes node events that can change a pod's target pools.
func nodeChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*corev1.Node), e.ObjectNew.(*corev1.Node)
		return !maps.Equal(o.Labels, n.Labels) || o.Spec.ProviderID != n.Spec.ProviderID || fmt.Sprint(o.Spec.Taints) != fmt.Sprint(n.Spec.Taints)
	}}
}
