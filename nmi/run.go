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
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/cluster"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// Update only for the startup taint of its own node (the chart's nmi-node policy).
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;update
// The assigner's records, in the release namespace (system).
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureassignedidentities,verbs=get;list;watch,namespace=system
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// Federation only: tokens bound to this node's pods, audience
// api://AzureADTokenExchange (the chart's nmi-token-request policy).
// +kubebuilder:rbac:groups="",resources=serviceaccounts/token,verbs=create
// Managed mode only: the IdentityNotAssigned event on a pod.
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureidentities;azureidentitybindings;azurepodidentityexceptions,verbs=get;list;watch
// Metrics behind authentication and authorization (--secure-metrics).
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Run serves until ctx ends. The interception rules stay in place after it
// returns: see intercept.RemoveRules.
func Run(ctx context.Context, cfg *rest.Config, opts Options) error {
	if opts.NodeName == "" {
		return errors.New("node name is empty: set NODE_NAME (the chart sets it from spec.nodeName)")
	}
	if opts.Mode == "" {
		opts.Mode = config.ModeStandard
	}
	if !slices.Contains(config.Modes, opts.Mode) {
		return fmt.Errorf("mode %q: want one of %v", opts.Mode, config.Modes)
	}
	if opts.AssignmentsNamespace == "" && opts.Mode == config.ModeStandard {
		return errors.New("assignments namespace is empty: set --assignments-namespace to the assigner's namespace (the chart sets the release namespace)")
	}
	if opts.Rules == nil {
		return errors.New("no interception rules: cmd/nmi passes nmi/intercept's Keeper")
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
	log := logf.Log.WithName("nmi")
	scheme, err := newScheme()
	if err != nil {
		return err
	}

	byObject := map[client.Object]cache.ByObject{&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", opts.NodeName), Transform: trimPod}}
	var pool *nodepool.Pool // known before the cache starts: only its record is cached
	switch {
	case opts.AssignmentsNamespace == "", opts.Mode != config.ModeStandard:
		// No records are read.
	default:
		node, err := readNode(ctx, cfg, scheme, opts.NodeName)
		records, known, whole := recordCacheConfig(opts.AssignmentsNamespace, node, err)
		byObject[&aadv1.AzureAssignedIdentity{}], pool = records, known
		if whole != nil {
			log.Info("caching every AzureAssignedIdentity of the namespace: this node's pool is not known yet", "namespace", opts.AssignmentsNamespace, "node", opts.NodeName, "reason", whole.Error())
		} else {
			log.Info("caching only this node's pool's AzureAssignedIdentity", "namespace", opts.AssignmentsNamespace, "record", identity.RecordName(*pool), "pool", pool.ID())
		}
	}
	// A cluster, not a manager: NMI elects no leader and runs no controller,
	// and the manager's metrics serving links k8s.io/apiserver
	// (internal/metricsserver serves them instead).
	cl, err := cluster.New(cfg, func(o *cluster.Options) {
		o.Scheme = scheme
		o.Cache = cache.Options{ByObject: byObject, DefaultTransform: cache.TransformStripManagedFields()}
		// Caching Secrets would mean watching every Secret in the cluster:
		// they are read live, each read reused for a second
		// (recentSecrets); the Node is read rarely.
		o.Client = client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}, &corev1.Node{}}}}
	})
	if err != nil {
		return fmt.Errorf("creating the cluster's client and cache: %w", err)
	}
	if err := cl.GetFieldIndexer().IndexField(ctx, &corev1.Pod{}, podIPIndex, podIPs); err != nil {
		return fmt.Errorf("indexing pods by IP: %w", err)
	}
	// The resolver reads the cache only, unlike the webhook's: the binding a
	// pod was admitted through reached the cache long before the pod runs,
	// and a live read on every refused request would let any pod load the
	// apiserver.
	resolver, err := identity.NewResolver(ctx, cl.GetCache(), nil, opts.AllowCrossNamespace)
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
		reader:       cl.GetClient(),
		resolver:     resolver,
		imds:         &imdsClient{endpoint: imdsURL, http: &http.Client{Transport: opts.IMDSTransport, Timeout: 30 * time.Second}, notFoundRetry: opts.IdentityNotFoundRetry},
		passthrough:  newPassthrough(imdsURL, opts.IMDSTransport),
		allowedPaths: opts.AllowedMetadataPaths,
		exceptions:   opts.Exceptions,
		protected:    protected,
		scopes:       scopes,
		assignments: &assignments{
			records: cl.GetClient(), namespace: opts.AssignmentsNamespace,
			nodes: cl.GetClient(), nodeName: opts.NodeName, pool: pool,
			allowExternal: opts.ServeExternalIdentities, wait: opts.UnknownCallerWait, waits: waits,
		},
		tokens:     newTokenCache(opts.TokenRefreshMargin, opts.TokenCacheSize),
		misses:     newMissLimiter(opts.UncachedTokensPerSecond, opts.UncachedTokenBurst),
		waits:      waits,
		callerWait: opts.UnknownCallerWait,
		mode:       opts.Mode,
		log:        log,
	}
	if opts.Mode == config.ModeManaged {
		srv.managed = &managedIdentities{nodePool: srv.assignments.nodePool, recorder: cl.GetEventRecorder("aad-pod-identity-nmi"), reported: map[string]bool{}}
	}
	if opts.CRISocket != "" {
		runtime, conn, err := dialRuntime(opts.CRISocket, 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		srv.runtime = runtime
	}
	if opts.Federation || opts.Mode == config.ModeFederated {
		if srv.federation, err = startFederation(ctx, cl.GetClient(), cl.GetCache(), opts, srv.tokens); err != nil {
			return err
		}
	}
	if opts.EnableServicePrincipals {
		srv.sp = &servicePrincipals{secrets: newRecentSecrets(cl.GetClient(), secretReuse), allowCrossNamespace: opts.AllowCrossNamespaceSecrets, defaultAuthorityHost: opts.AADAuthorityHost, transport: opts.AADTransport}
	}

	var ready atomic.Bool
	// Closed once the rules are in: the guard must stand before the
	// listener takes connections that did not come through the DNAT.
	guarded := make(chan struct{})
	probes := map[string]healthz.Checker{"interception": func(*http.Request) error {
		if !ready.Load() {
			return errors.New("interception rules or pod cache not ready")
		}
		return nil
	}}
	log.Info("starting NMI", "node", opts.NodeName, "allowCrossNamespace", opts.AllowCrossNamespace, "listen", opts.ListenAddress, "imds", opts.IMDSEndpoint)
	// As a manager would: the first to fail stops the others.
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return cl.Start(ctx) })
	g.Go(func() error { return serveMetrics(ctx, cfg, cl.GetHTTPClient(), opts, log.WithName("metrics")) })
	g.Go(func() error { return serveProbes(ctx, opts.ProbeAddr, probes) })
	g.Go(func() error {
		// Serving before the caches are filled would refuse known pods.
		if err := syncCaches(ctx, cl.GetCache(), opts.Mode); err != nil {
			return err
		}
		select {
		case <-guarded:
		case <-ctx.Done():
			return nil
		}
		return serve(ctx, opts.ListenAddress, opts.MaxConnsPerIP, srv.Handler())
	})
	g.Go(func() error { return keepRules(ctx, cl, opts, &ready, guarded) })
	return g.Wait()
}

// readNode reads the node once, uncached (the cache is not built yet), to
// learn its pool before the cache is.
func readNode(ctx context.Context, cfg *rest.Config, scheme *runtime.Scheme, name string) (*corev1.Node, error) {
	c, err := client.New(cfg, client.Options{Scheme: scheme})
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
// filled; only standard mode has assignment records to read.
func syncCaches(ctx context.Context, c cache.Cache, mode config.Mode) error {
	objs := []client.Object{&corev1.Pod{}, &aadv1.AzureIdentity{}, &aadv1.AzureIdentityBinding{}, &aadv1.AzurePodIdentityException{}}
	if mode == config.ModeStandard {
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
	return serveHTTP(ctx, limitPerIP(l, maxConnsPerIP), &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// A token request may wait for the caller's IP and one fetch.
		WriteTimeout:   fetchDeadline + 30*time.Second,
		IdleTimeout:    30 * time.Second,
		MaxHeaderBytes: 16 << 10,
	})
}

// serveHTTP runs hs on l until ctx ends.
func serveHTTP(ctx context.Context, l net.Listener, hs *http.Server) error {
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(shutdown) // best effort: the process is stopping
	}()
	if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s: %w", l.Addr(), err)
	}
	return nil
}

// keepRules installs the interception and its guard (and closes guarded),
// then, once the pod cache is synced, marks NMI ready and lifts the startup
// taint; the rules are kept until ctx ends.
func keepRules(ctx context.Context, cl cluster.Cluster, opts Options, ready *atomic.Bool, guarded chan<- struct{}) error {
	if err := opts.Rules.Install(); err != nil {
		return err
	}
	close(guarded)
	if err := syncCaches(ctx, cl.GetCache(), opts.Mode); err != nil {
		return err
	}
	var podsChanged chan struct{}
	if opts.Rules.GuardsPods() {
		podsChanged = make(chan struct{}, 1)
		if err := notifyPodChanges(ctx, cl.GetCache(), podsChanged); err != nil {
			return err
		}
	}
	if opts.RemoveStartupTaint {
		if err := removeStartupTaint(ctx, cl.GetClient(), opts.NodeName); err != nil {
			return err
		}
		logf.Log.WithName("nmi").Info("startup taint removed", "node", opts.NodeName, "taint", aadv1.NMINotReadyTaint)
	}
	ready.Store(true)
	return opts.Rules.Keep(ctx, podsChanged)
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

// startFederation serves federated identities with service-account tokens
// from the apiserver's TokenRequest, and drops what it keeps for a pod as
// soon as the pod is deleted.
func startFederation(ctx context.Context, c client.Client, informers cache.Cache, opts Options, tokens *tokenCache) (*federation, error) {
	requestToken := func(ctx context.Context, namespace, name string, req *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
		if err := c.SubResource("token").Create(ctx, sa, req); err != nil {
			return nil, fmt.Errorf("requesting a token of service account %s/%s: %w", namespace, name, err)
		}
		return req, nil
	}
	f := newFederation(requestToken, opts.NodeName, opts.FederationTenantID, opts.AADAuthorityHost, opts.AADTransport, tokens)
	inf, err := informers.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return nil, fmt.Errorf("watching pods: %w", err)
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{DeleteFunc: func(obj any) {
		if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		if pod, ok := obj.(*corev1.Pod); ok {
			f.forget(pod.UID)
		}
	}})
	if err != nil {
		return nil, fmt.Errorf("watching pods: %w", err)
	}
	return f, nil
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
