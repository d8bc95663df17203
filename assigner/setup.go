package assigner

import (
	"cmp"
	"context"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/compat"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/metrics"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// Field indexes of the assigner's cache.
const (
	// podIdentityIndex indexes pods by the AzureIdentities they were
	// admitted for.
	podIdentityIndex = "assigner.identity"
	recordPoolIndex  = "spec.nodePool"
	// recordIdentityIndex indexes records by the AzureIdentities
	// (namespace/name) of their entries, so an edit of one finds the pools
	// to re-pair.
	recordIdentityIndex = "spec.azureIdentityRef"
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
	// MaxConcurrentPools is how many pools are worked on at once (0: 8).
	// A round mostly waits on ARM's long-running operations, one pool's
	// after the other's, so it bounds how long a burst over many pools
	// takes.
	MaxConcurrentPools int
	// Immutable identities (client or resource IDs) are never removed.
	Immutable []string
	// LegacyEvidenceBefore is when this installation began (InstalledAt):
	// aad-pod-identity 1.x's records count as evidence only when created
	// before it; zero accepts none.
	LegacyEvidenceBefore time.Time
	// NMINodeSelection is where NMI runs, its DaemonSet's node selection as
	// JSON ("": nodepool.DefaultCoverage): identities go only onto those
	// nodes' pools, since on any other node every pod reads them from IMDS.
	NMINodeSelection    string
	AllowCrossNamespace bool
	// Clock paces the pool controller and dates the lifted gates (nil: the
	// real clock); tests use a fake one.
	Clock clock.PassiveClock
}

// clock is opts.Clock, or the real one.
func (o Options) clock() clock.PassiveClock {
	if o.Clock == nil {
		return clock.RealClock{}
	}
	return o.Clock
}

// ManagerOptions configure the process around the controllers.
type ManagerOptions struct {
	MetricsAddr, ProbeAddr string
	// PprofAddr serves net/http/pprof when set ("" or "0": off).
	PprofAddr string
	// SecureMetrics serves metrics over HTTPS to callers the apiserver
	// authenticates and authorizes (get on /metrics).
	SecureMetrics           bool
	LeaderElect             bool
	LeaderElectionNamespace string
	// QPS and Burst limit requests to the API server (0: 500 and 1000).
	// A burst costs about one write per pod (its gate): at client-go's
	// default of 20, or even 100, the last pods of a 1,000-pod burst waited
	// on the client for seconds after ARM was done. The chart gives the
	// assigner its own API priority level, so the apiserver, not this
	// limit, keeps a burst from crowding out other clients.
	QPS   float32
	Burst int
}

// leaderElectionID names the assigner's Lease.
const leaderElectionID = "aad-pod-identity-assigner"

// InstalledAt tells when this installation began: the creation of its
// MutatingWebhookConfiguration, which the chart creates at install and
// deletes at uninstall, and only cluster admins may write (now, before it
// exists). The webhook's adoption of earlier pods counts from it too.
func InstalledAt(ctx context.Context, cfg *rest.Config, webhookConfiguration string) (time.Time, error) {
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return time.Time{}, fmt.Errorf("creating client: %w", err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(ctx, client.ObjectKey{Name: webhookConfiguration}, &mwc); err != nil {
		if apierrors.IsNotFound(err) {
			// Creation times are whole seconds: a record of this second
			// is not before it.
			return time.Now().Truncate(time.Second), nil
		}
		return time.Time{}, fmt.Errorf("getting MutatingWebhookConfiguration %s: %w", webhookConfiguration, err)
	}
	return mwc.CreationTimestamp.Time, nil
}

// NewManager builds a manager running the assigner; the caller starts it.
func NewManager(cfg *rest.Config, mo ManagerOptions, opts Options) (manager.Manager, error) {
	labelled, err := labels.NewRequirement(aadv1.BindingLabel, selection.Exists, nil)
	if err != nil {
		return nil, err
	}
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 500, 1000
	if mo.QPS > 0 {
		cfg.QPS = mo.QPS
	}
	if mo.Burst > 0 {
		cfg.Burst = mo.Burst
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  identity.Scheme(),
		Metrics:                 metrics.ServerOptions(mo.MetricsAddr, mo.SecureMetrics),
		HealthProbeBindAddress:  mo.ProbeAddr,
		PprofBindAddress:        mo.PprofAddr,
		LeaderElection:          mo.LeaderElect,
		LeaderElectionID:        leaderElectionID,
		LeaderElectionNamespace: mo.LeaderElectionNamespace,
		// Only labelled pods concern us, and only what podForAssigner keeps
		// of them; caching the rest would cost memory. Pool records are read
		// whole by every pod round and can be large (an entry per
		// identity): they are read from the cache without a copy and never
		// modified in place, and share their entries' strings
		// (recordForAssigner).
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:                  {Label: labels.NewSelector().Add(*labelled), Transform: podForAssigner},
			&aadv1.AzureAssignedIdentity{}: {UnsafeDisableDeepCopy: ptr.To(true), Transform: recordForAssigner},
		},
			// managedFields were about a third of the cached pods' memory at
			// 10k pods; the assigner writes merge patches, never applies.
			DefaultTransform: cache.TransformStripManagedFields(),
		},
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

// RBAC of the assigner (config/rbac/assigner, generated; namespace system
// is the release namespace). Pods are only patched (annotations and gate).
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureidentities;azureidentitybindings,verbs=get;list;watch
// Records are written in the release namespace only; 1.x's per-pod
// records, in any namespace, are only deleted (legacyReaper).
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureassignedidentities,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureassignedidentities,verbs=create,namespace=system
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureassignedidentities/status,verbs=patch,namespace=system
// The installation's start bounds aad-pod-identity 1.x's evidence (InstalledAt).
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete,namespace=system
// Metrics behind authentication and authorization (--secure-metrics).
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Setup registers the indexes and the pod and pool controllers.
func Setup(ctx context.Context, mgr manager.Manager, opts Options) error {
	if opts.ARM == nil || opts.Namespace == "" || opts.GCGracePeriod <= 0 || opts.DriftCheckPeriod <= 0 {
		return fmt.Errorf("assigner options need an ARM client, a namespace and positive periods")
	}
	nmi, err := nodepool.ParseCoverage(cmp.Or(opts.NMINodeSelection, nodepool.DefaultCoverage))
	if err != nil {
		return err
	}
	resolver, err := identity.NewResolver(ctx, mgr.GetCache(), nil, opts.AllowCrossNamespace)
	if err != nil {
		return err
	}
	indexer := mgr.GetFieldIndexer()
	if err := indexer.IndexField(ctx, &corev1.Pod{}, podIdentityIndex, indexPodIdentities); err != nil {
		return fmt.Errorf("indexing pods by identity: %w", err)
	}
	if err := indexer.IndexField(ctx, &aadv1.AzureAssignedIdentity{}, recordPoolIndex, indexRecordPool); err != nil {
		return fmt.Errorf("indexing records by pool: %w", err)
	}
	if err := indexer.IndexField(ctx, &aadv1.AzureAssignedIdentity{}, recordIdentityIndex, indexRecordIdentity); err != nil {
		return fmt.Errorf("indexing records by identity: %w", err)
	}
	if err := indexer.IndexField(ctx, &aadv1.AzureAssignedIdentity{}, legacyResourceIndex, indexLegacyResource); err != nil {
		return fmt.Errorf("indexing 1.x's records by identity: %w", err)
	}

	c := mgr.GetClient()
	recorder := mgr.GetEventRecorder("aad-pod-identity-assigner")
	pods := &podReconciler{
		client:         c,
		resolver:       resolver,
		recorder:       recorder,
		namespace:      opts.Namespace,
		crossNamespace: opts.AllowCrossNamespace,
		nmi:            nmi,
		clock:          opts.clock(),
	}
	if err := pods.SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&legacyReaper{client: c, namespace: opts.Namespace}).SetupWithManager(mgr); err != nil {
		return err
	}
	return newPoolReconciler(c, newPodTally(), recorder, opts).SetupWithManager(mgr)
}

// indexRecordPool indexes records by their pool's key.
func indexRecordPool(o client.Object) []string {
	return []string{aadv1.IDKey(o.(*aadv1.AzureAssignedIdentity).Spec.NodePool)}
}

// indexRecordIdentity indexes records by their entries' AzureIdentities
// (and a one-identity record by its own).
func indexRecordIdentity(o client.Object) []string {
	rec := o.(*aadv1.AzureAssignedIdentity)
	var keys []string
	for i := range rec.Status.Identities {
		keys = append(keys, entryKey(&rec.Status.Identities[i]).String())
	}
	if e, ok := compat.Read01(rec); ok {
		keys = append(keys, entryKey(e).String())
	}
	return keys
}
