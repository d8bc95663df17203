// Package nmi is the node agent: iptables sends pods' requests for
// 169.254.169.254 to it, and it hands out tokens only for the identities a
// pod was admitted for.
package nmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/metrics"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// Options configure NMI; cmd/nmi maps its flags onto them.
type Options struct {
	NodeName         string
	ListenAddress    string
	MetricsAddr      string
	ProbeAddr        string
	Interception     Interception
	IMDSEndpoint     string
	AADAuthorityHost string
	SyncPeriod       time.Duration
	// CNICacheDir is libcni's results cache (/var/lib/cni/results): set,
	// metadata traffic from a pod's address that enters through another
	// interface than the pod's own veth is dropped (SpoofChain).
	CNICacheDir          string
	RemoveStartupTaint   bool
	FlushConntrack       bool
	AllowedMetadataPaths []string
	// EnableServicePrincipals lets NMI read Secrets for type 1 and 2.
	EnableServicePrincipals    bool
	AllowCrossNamespaceSecrets bool
	// AllowCrossNamespace counts bindings outside the pod's namespace when
	// re-resolving its label; it must match the webhook's.
	AllowCrossNamespace bool
	// IdentityNotFoundRetry paces retries while IMDS does not know a
	// user-assigned identity yet.
	IdentityNotFoundRetry wait.Backoff
	// UnknownCallerWait is how long a request from an IP no pod on this
	// node has yet waits for the pod's IP to reach NMI's cache.
	UnknownCallerWait time.Duration
	// TokenRefreshMargin is how long before expiry a cached token is renewed.
	TokenRefreshMargin time.Duration
	// TokenCacheSize bounds the cached tokens (0: DefaultTokenCacheSize).
	TokenCacheSize int
	// UncachedTokensPerSecond and UncachedTokenBurst limit, per pod, the
	// token requests that miss the cache (0: no limit).
	UncachedTokensPerSecond float64
	UncachedTokenBurst      int
	// SecureMetrics serves metrics over HTTPS to callers the apiserver
	// authenticates and authorizes (get on /metrics): NMI shares the node's
	// address, which every pod can reach.
	SecureMetrics bool
	// MaxConnsPerIP caps the open connections from one source address.
	MaxConnsPerIP int
	// MaxWaitingRequests caps the requests waiting at once for the cache
	// (0: no cap).
	MaxWaitingRequests int
	// UpstreamIdleConns is how many idle connections NMI keeps to each
	// upstream (IMDS, each Azure AD authority): as many as concurrent
	// token fetches, so that a busy NMI reuses them instead of opening one
	// per call (Go's default keeps 2).
	UpstreamIdleConns int
	// Exceptions scopes AzurePodIdentityExceptions.
	Exceptions ExceptionPolicy
	// ProtectedIdentities (client or resource IDs) are the cluster's own;
	// NMI serves them to no pod, whatever an AzureIdentity names.
	ProtectedIdentities []string
	// CloudConfig is the node's azure.json: the kubelet identity it names
	// is protected, and is a node identity for exception pods.
	CloudConfig string
	// IdentityScopes are namespace=scope entries: the admin's allowlist of
	// where each namespace's user-assigned identities may live (see
	// identity.ParseScopes); none: no restriction.
	IdentityScopes []string
	// Mode is ModeStandard (the assigner assigns and records identities) or
	// ModeManaged (admins assign them; no records).
	Mode string
	// AssignmentsNamespace is where the assigner writes its
	// AzureAssignedIdentities, one per node pool: a user-assigned identity is
	// served only if its entry in the record of this node's pool vouches
	// for it.
	AssignmentsNamespace string
	// CRISocket, when set, is the container runtime's socket: each caller is
	// confirmed with the runtime's pod sandboxes, not only NMI's cache.
	CRISocket string
	// ServeExternalIdentities serves identities that were on the pool before
	// the assigner needed them (entries marked external).
	ServeExternalIdentities bool

	// IPTablesBackend selects the iptables binary (auto: the node's).
	IPTablesBackend Backend

	// IPTables, IMDSTransport and AADTransport replace the real ones in tests.
	IPTables      IPTables
	IMDSTransport http.RoundTripper
	AADTransport  policy.Transporter
}

// DefaultIdentityNotFoundRetry waits about 15 s in all for an assignment to
// reach the VM.
var DefaultIdentityNotFoundRetry = wait.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Steps: 7, Cap: 4 * time.Second}

// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// Update only for the startup taint of its own node (the chart's nmi-node policy).
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;update
// The assigner's records, in the release namespace (system).
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureassignedidentities,verbs=get;list;watch,namespace=system
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// Managed mode only: the IdentityNotAssigned event on a pod.
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureidentities;azureidentitybindings;azurepodidentityexceptions,verbs=get;list;watch
// Metrics behind authentication and authorization (--secure-metrics).
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Run serves until ctx ends. The interception rules stay in place after it
// returns: see RemoveRules.
// protectedIdentities are those NMI serves to no pod: the listed ones, the
// node identities exception pods may name, and the node's own (kubelet)
// identity from its cloud config, which becomes one of those node
// identities: secure without a chart value on AKS.
func protectedIdentities(opts *Options) (identity.Protected, error) {
	kubelet, err := identity.NodeIdentity(opts.CloudConfig)
	if err != nil {
		return nil, err
	}
	if kubelet != "" && !slices.ContainsFunc(opts.Exceptions.NodeIdentityClientIDs, func(id string) bool { return aadv1.SameID(id, kubelet) }) {
		opts.Exceptions.NodeIdentityClientIDs = append(opts.Exceptions.NodeIdentityClientIDs, kubelet)
	}
	return identity.NewProtected(append(slices.Clone(opts.ProtectedIdentities), opts.Exceptions.NodeIdentityClientIDs...)), nil
}

func Run(ctx context.Context, cfg *rest.Config, opts Options) error {
	if opts.NodeName == "" {
		return errors.New("node name is empty: set NODE_NAME (the chart sets it from spec.nodeName)")
	}
	switch opts.Mode {
	case ModeStandard, "":
	case ModeManaged:
	default:
		return fmt.Errorf("mode %q: want %s or %s", opts.Mode, ModeStandard, ModeManaged)
	}
	if opts.AssignmentsNamespace == "" && opts.Mode != ModeManaged {
		return errors.New("assignments namespace is empty: set --assignments-namespace to the assigner's namespace (the chart sets the release namespace)")
	}
	opts.Interception.ListenAddress = opts.ListenAddress
	if _, err := opts.Interception.chains(); err != nil {
		return err
	}
	scopes, err := identity.ParseScopes(opts.IdentityScopes)
	if err != nil {
		return err
	}
	protected, err := protectedIdentities(&opts)
	if err != nil {
		return err
	}
	imdsURL, err := url.Parse(opts.IMDSEndpoint)
	if err != nil || imdsURL.Host == "" {
		return fmt.Errorf("IMDS endpoint %q is not an absolute URL", opts.IMDSEndpoint)
	}
	log := ctrl.Log.WithName("nmi")
	if opts.IPTables == nil {
		ipt, backend, reason, err := NewIPTables(opts.IPTablesBackend, ExecRunner)
		if err != nil {
			return err
		}
		log.Info("iptables backend", "backend", backend, "reason", reason)
		opts.IPTables = ipt
	}

	byObject := map[client.Object]cache.ByObject{&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", opts.NodeName)}}
	var pool *nodepool.Pool // known before the cache starts: only its record is cached
	switch {
	case opts.AssignmentsNamespace == "", opts.Mode == ModeManaged:
		// No records are read.
	default:
		node, err := readNode(ctx, cfg, opts.NodeName)
		records, known, whole := recordCacheConfig(opts.AssignmentsNamespace, node, err)
		byObject[&aadv1.AzureAssignedIdentity{}], pool = records, known
		if whole != nil {
			log.Info("caching every AzureAssignedIdentity of the namespace: this node's pool is not known yet", "namespace", opts.AssignmentsNamespace, "node", opts.NodeName, "reason", whole.Error())
		} else {
			log.Info("caching only this node's pool's AzureAssignedIdentity", "namespace", opts.AssignmentsNamespace, "record", identity.RecordName(*pool), "pool", pool.ID())
		}
	}
	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme:                 identity.Scheme(),
		Metrics:                metrics.ServerOptions(opts.MetricsAddr, opts.SecureMetrics),
		HealthProbeBindAddress: opts.ProbeAddr,
		Cache: cache.Options{
			ByObject:         byObject,
			DefaultTransform: cache.TransformStripManagedFields(),
		},
		// Caching Secrets would mean watching every Secret in the cluster:
		// they are read live, each read reused for a second
		// (recentSecrets); the Node is read rarely.
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}, &corev1.Node{}}}},
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &corev1.Pod{}, podIPIndex, podIPs); err != nil {
		return fmt.Errorf("indexing pods by IP: %w", err)
	}
	// The resolver reads the cache only, unlike the webhook's: the binding a
	// pod was admitted through reached the cache long before the pod runs,
	// and a live read on every refused request would let any pod load the
	// apiserver.
	resolver, err := identity.NewResolver(ctx, mgr.GetCache(), nil, opts.AllowCrossNamespace)
	if err != nil {
		return err
	}
	waits := newWaitLimit(opts.MaxWaitingRequests)
	if opts.IMDSTransport == nil {
		opts.IMDSTransport = upstreamTransport(opts.UpstreamIdleConns)
	}
	if opts.AADTransport == nil {
		opts.AADTransport = &http.Client{Transport: upstreamTransport(opts.UpstreamIdleConns)}
	}
	srv := &Server{
		reader:       mgr.GetClient(),
		resolver:     resolver,
		imds:         &imdsClient{endpoint: imdsURL, http: &http.Client{Transport: opts.IMDSTransport, Timeout: 30 * time.Second}, notFoundRetry: opts.IdentityNotFoundRetry},
		passthrough:  newPassthrough(imdsURL, opts.IMDSTransport),
		allowedPaths: opts.AllowedMetadataPaths,
		exceptions:   opts.Exceptions,
		protected:    protected,
		scopes:       scopes,
		assignments: &assignments{
			records: mgr.GetClient(), namespace: opts.AssignmentsNamespace,
			nodes: mgr.GetClient(), nodeName: opts.NodeName, pool: pool,
			allowExternal: opts.ServeExternalIdentities, wait: opts.UnknownCallerWait, waits: waits,
		},
		tokens:     newTokenCache(opts.TokenRefreshMargin, opts.TokenCacheSize),
		misses:     newMissLimiter(opts.UncachedTokensPerSecond, opts.UncachedTokenBurst),
		waits:      waits,
		callerWait: opts.UnknownCallerWait,
		log:        log,
	}
	if opts.Mode == ModeManaged {
		srv.managed = &managedIdentities{nodePool: srv.assignments.nodePool, recorder: mgr.GetEventRecorder("aad-pod-identity-nmi"), reported: map[string]bool{}}
	}
	if opts.CRISocket != "" {
		runtime, conn, err := dialRuntime(opts.CRISocket, 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		srv.runtime = runtime
	}
	if opts.EnableServicePrincipals {
		srv.sp = &servicePrincipals{secrets: newRecentSecrets(mgr.GetClient(), secretReuse), allowCrossNamespace: opts.AllowCrossNamespaceSecrets, defaultAuthorityHost: opts.AADAuthorityHost, transport: opts.AADTransport}
	}

	var ready atomic.Bool
	// Closed once the rules are in: the guard must stand before the
	// listener takes connections that did not come through the DNAT.
	guarded := make(chan struct{})
	if err := errors.Join(
		mgr.AddHealthzCheck("ping", healthz.Ping),
		mgr.AddReadyzCheck("interception", func(*http.Request) error {
			if !ready.Load() {
				return errors.New("interception rules or pod cache not ready")
			}
			return nil
		}),
		mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			// Serving before the caches are filled would refuse known pods.
			if err := syncCaches(ctx, mgr.GetCache(), opts.Mode); err != nil {
				return err
			}
			select {
			case <-guarded:
			case <-ctx.Done():
				return nil
			}
			return serve(ctx, opts.ListenAddress, opts.MaxConnsPerIP, srv.Handler())
		})),
		mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			return keepRules(ctx, mgr, opts, &ready, guarded)
		})),
	); err != nil {
		return err
	}
	log.Info("starting NMI", "node", opts.NodeName, "allowCrossNamespace", opts.AllowCrossNamespace, "listen", opts.ListenAddress, "metadata", net.JoinHostPort(opts.Interception.MetadataIP, fmt.Sprint(opts.Interception.MetadataPort)), "imds", opts.IMDSEndpoint)
	return mgr.Start(ctx)
}

// readNode reads the node once, uncached (the manager's cache is not built
// yet), to learn its pool before the cache is.
func readNode(ctx context.Context, cfg *rest.Config, name string) (*corev1.Node, error) {
	c, err := client.New(cfg, client.Options{Scheme: identity.Scheme()})
	if err != nil {
		return nil, fmt.Errorf("reading node %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var node corev1.Node
	if err := c.Get(ctx, client.ObjectKey{Name: name}, &node); err != nil {
		return nil, fmt.Errorf("reading node %s: %w", name, err)
	}
	return &node, nil
}

// syncCaches starts the informers NMI reads and waits until they are
// filled; managed mode has no assignment records to read.
func syncCaches(ctx context.Context, c cache.Cache, mode string) error {
	objs := []client.Object{&corev1.Pod{}, &aadv1.AzureIdentity{}, &aadv1.AzureIdentityBinding{}, &aadv1.AzurePodIdentityException{}}
	if mode != ModeManaged {
		objs = append(objs, &aadv1.AzureAssignedIdentity{})
	}
	for _, o := range objs {
		if _, err := c.GetInformer(ctx, o); err != nil {
			return fmt.Errorf("watching %T: %w", o, err)
		}
	}
	if !c.WaitForCacheSync(ctx) {
		return fmt.Errorf("waiting for caches: %w", ctx.Err())
	}
	return nil
}

// serve runs the metadata server on addr until ctx ends.
func serve(ctx context.Context, addr string, maxConnsPerIP int, h http.Handler) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("serving metadata on %s: %w", addr, err)
	}
	return serveOn(ctx, l, maxConnsPerIP, h)
}

// serveOn serves on l until ctx ends. Every caller is a pod that may be
// hostile: connections are capped per source address, and slow or idle ones
// are closed.
func serveOn(ctx context.Context, l net.Listener, maxConnsPerIP int, h http.Handler) error {
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// A token request may wait for the caller's IP and one fetch.
		WriteTimeout:   fetchDeadline + 30*time.Second,
		IdleTimeout:    30 * time.Second,
		MaxHeaderBytes: 16 << 10,
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(shutdown) // best effort: the process is stopping
	}()
	if err := hs.Serve(limitPerIP(l, maxConnsPerIP)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving metadata on %s: %w", l.Addr(), err)
	}
	return nil
}

// keepRules installs the interception and its guard (and closes guarded),
// then, once the pod cache is synced, marks NMI ready and lifts the startup
// taint; it re-checks the rules every sync period, and the anti-spoofing
// rules also whenever a pod of the node comes, goes or changes address.
func keepRules(ctx context.Context, mgr manager.Manager, opts Options, ready *atomic.Bool, guarded chan<- struct{}) error {
	log := ctrl.Log.WithName("iptables")
	spoofed := func() error {
		if opts.CNICacheDir == "" {
			return nil
		}
		pods, changed, err := EnsureSpoofRules(opts.IPTables, opts.Interception, opts.CNICacheDir)
		if err != nil {
			return fmt.Errorf("anti-spoofing rules: %w", err)
		}
		spoofGuardedPods.Set(float64(pods))
		if changed {
			log.V(1).Info("anti-spoofing rules written", "chain", SpoofChain, "pods", pods)
		}
		return nil
	}
	check := func() error {
		// Rules first: until route_localnet is on, redirected packets are
		// dropped (fail closed), and the guard is in before it is.
		changed, err := EnsureRules(opts.IPTables, opts.Interception)
		if err != nil {
			return err
		}
		if changed {
			rulesRepairs.Inc()
			log.Info("interception rules written", "chain", Chain)
		}
		if opts.Interception.LoopbackTarget() {
			if err := enableRouteLocalnet(); err != nil {
				return err
			}
		}
		return spoofed()
	}
	// Nothing may be served before the rules are in place.
	if err := check(); err != nil {
		return fmt.Errorf("installing interception rules: %w", err)
	}
	close(guarded)
	if err := syncCaches(ctx, mgr.GetCache(), opts.Mode); err != nil {
		return err
	}
	podsChanged := make(chan struct{}, 1)
	if opts.CNICacheDir != "" {
		if err := notifyPodChanges(ctx, mgr.GetCache(), podsChanged); err != nil {
			return err
		}
		warnWithoutBridgeNetfilter(log)
	}
	if opts.FlushConntrack {
		if err := flushConntrack(opts.Interception.MetadataIP); err != nil {
			log.Error(err, "flushing conntrack entries; connections opened before interception keep reaching IMDS until they close")
		}
	}
	if opts.RemoveStartupTaint {
		if err := removeStartupTaint(ctx, mgr.GetClient(), opts.NodeName); err != nil {
			return err
		}
		log.Info("startup taint removed", "node", opts.NodeName, "taint", aadv1.NMINotReadyTaint)
	}
	ready.Store(true)
	tick := time.NewTicker(opts.SyncPeriod)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := check(); err != nil {
				log.Error(err, "checking interception rules")
			}
		case <-podsChanged:
			if err := spoofed(); err != nil {
				log.Error(err, "updating anti-spoofing rules")
			}
		}
	}
}

// notifyPodChanges signals changed (without blocking: one pending signal
// stands for any number) when a pod of the node is added or deleted or its
// address changes.
func notifyPodChanges(ctx context.Context, c cache.Cache, changed chan<- struct{}) error {
	inf, err := c.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return fmt.Errorf("watching pods: %w", err)
	}
	signal := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { signal() },
		UpdateFunc: func(o, n any) {
			if op, ok := o.(*corev1.Pod); !ok || op.Status.PodIP != n.(*corev1.Pod).Status.PodIP {
				signal()
			}
		},
		DeleteFunc: func(any) { signal() },
	})
	if err != nil {
		return fmt.Errorf("watching pods: %w", err)
	}
	return nil
}

// bridgeNetfilterPath says whether bridged packets traverse iptables, which
// the physdev rules need.
var bridgeNetfilterPath = "/proc/sys/net/bridge/bridge-nf-call-iptables"

func warnWithoutBridgeNetfilter(log logr.Logger) {
	if v, err := os.ReadFile(bridgeNetfilterPath); err != nil || strings.TrimSpace(string(v)) != "1" {
		log.Error(errors.New("bridged packets do not traverse iptables (br_netfilter not loaded, or net.bridge.bridge-nf-call-iptables=0)"),
			"the anti-spoofing rules cannot see pods on bridges", "sysctl", bridgeNetfilterPath)
	}
}

// flushConntrack drops tracked connections to the metadata IP, so that none
// opened before the DNAT rule keeps bypassing it.
func flushConntrack(metadataIP string) error {
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigDstIP, net.ParseIP(metadataIP)); err != nil {
		return err
	}
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.FAMILY_V4, f)
	return err
}

// removeStartupTaint removes NMINotReadyTaint from the node.
func removeStartupTaint(ctx context.Context, c client.Client, nodeName string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var node corev1.Node
		if err := c.Get(ctx, client.ObjectKey{Name: nodeName}, &node); err != nil {
			return err
		}
		kept := slices.DeleteFunc(slices.Clone(node.Spec.Taints), func(t corev1.Taint) bool { return t.Key == aadv1.NMINotReadyTaint })
		if len(kept) == len(node.Spec.Taints) {
			return nil
		}
		node.Spec.Taints = kept
		return c.Update(ctx, &node)
	})
	if err != nil {
		return fmt.Errorf("removing taint %s from node %s: %w", aadv1.NMINotReadyTaint, nodeName, err)
	}
	return nil
}

// metricsOptions serves metrics in plain HTTP or, with SecureMetrics, over
// HTTPS (a self-signed certificate) behind the apiserver's authentication
// and authorization, as kubebuilder's projects do.
