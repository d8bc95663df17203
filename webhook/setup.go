// Package webhook is the admission webhook: it resolves a pod's
// aadpodidbinding label at creation, records the admitted identities on the
// pod and gates it until the assigner has put them on the node pools, and
// guards those records afterwards.
package webhook

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/metrics"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// +kubebuilder:rbac:groups=aadpodidentity.k8s.io,resources=azureidentities;azureidentitybindings,verbs=get;list;watch
// Standard mode: a gated pod's target pools at admission.
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// Lifting the gates of pods admitted in standard mode (managed mode: a
// watch of unscheduled pods), and adopting pods created before the
// webhook, dated by its configuration.
// +kubebuilder:rbac:groups="",resources=pods,verbs=list;watch;patch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// Metrics behind authentication and authorization (--secure-metrics).
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Paths the handlers are served on; the generated configurations use them.
const (
	MutatePodPath         = "/mutate-v1-pod"
	ValidatePodPath       = "/validate-v1-pod"
	ValidateBindingPath   = "/validate-aadpodidentity-k8s-io-v1-azureidentitybinding"
	ValidateIdentityPath  = "/validate-aadpodidentity-k8s-io-v1-azureidentity"
	ValidateExceptionPath = "/validate-aadpodidentity-k8s-io-v1-azurepodidentityexception"
	MutateIdentityPath    = "/mutate-aadpodidentity-k8s-io-v1-azureidentity"
	MutateBindingPath     = "/mutate-aadpodidentity-k8s-io-v1-azureidentitybinding"
)

// Options configure the webhook.
type Options struct {
	// Port and CertDir/CertName/KeyName locate the HTTPS server and its
	// serving certificate, which is reloaded when it changes on disk.
	Port                       int
	CertDir, CertName, KeyName string
	// MetricsAddr and ProbeAddr are the metrics and /healthz, /readyz
	// listen addresses ("0" disables).
	MetricsAddr, ProbeAddr string
	// SecureMetrics serves metrics over HTTPS to callers the apiserver
	// authenticates and authorizes (get on /metrics).
	SecureMetrics bool
	// AllowCrossNamespace lets a pod match bindings in every namespace, as
	// releases before this design did.
	AllowCrossNamespace bool
	// Mode is config.ModeStandard (pods with user-assigned identities are gated
	// until the assigner has put them on the pools), config.ModeManaged (admins
	// assign identities) or config.ModeFederated (NMI exchanges the pod's
	// service-account token); in the last two no pod is gated, and gates set
	// earlier are lifted.
	Mode config.Mode
	// Federation is policy.federation.enabled: NMI serves federated
	// identities (the AzureIdentity validator warns when it does not).
	Federation bool
	// TrustedServiceAccounts ("namespace/name") may change the label,
	// annotations and gate of an existing pod.
	TrustedServiceAccounts []string
	// ExceptionNamespaces and ExceptionTokens are NMI's scope for
	// AzurePodIdentityExceptions, told to whoever creates one.
	ExceptionNamespaces []string
	ExceptionTokens     config.ExceptionTokens
	// ProtectedIdentities (client or resource IDs) are the cluster's own;
	// no AzureIdentity may name them.
	ProtectedIdentities []string
	// IdentityScopes are namespace=scope entries: the admin's allowlist of
	// where each namespace's user-assigned identities may live (see
	// identity.ParseScopes); none: no restriction.
	IdentityScopes []string
	// AdoptPreexistingPods resolves and annotates, once per start, the
	// labelled pods created before WebhookConfigurationName, the
	// MutatingWebhookConfiguration of this release.
	AdoptPreexistingPods     bool
	WebhookConfigurationName string
	// ShutdownDrain is how long the webhook keeps serving after its context
	// ends, unready and closing each connection after its answer, so that
	// the API server stops reusing connections to this pod before they
	// close (0: stop at once).
	ShutdownDrain time.Duration
	// NMINodeSelection is where NMI runs, its DaemonSet's node selection
	// as JSON ("": nodepool.DefaultCoverage): a gated pod's identities go
	// only onto those nodes' pools, and a pod that can only run elsewhere
	// is refused.
	NMINodeSelection string
}

// NewManager builds a manager that serves the webhook with health checks and
// metrics; the caller starts it.
func NewManager(ctx context.Context, cfg *rest.Config, opts Options) (manager.Manager, error) {
	byObject := map[client.Object]cache.ByObject{
		// Nodes are read for target pools only: their status (images,
		// conditions) would be most of the cache.
		&corev1.Node{}: {Transform: nodeForTargets},
	}
	if opts.Mode == config.ModeManaged || opts.Mode == config.ModeFederated {
		byObject[&corev1.Pod{}] = unscheduledPods()
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 identity.Scheme(),
		Cache:                  cache.Options{ByObject: byObject},
		Metrics:                metrics.ServerOptions(opts.MetricsAddr, opts.SecureMetrics),
		HealthProbeBindAddress: opts.ProbeAddr,
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	server := &CertWaitingServer{
		Server:   webhook.NewServer(webhook.Options{Port: opts.Port, CertDir: opts.CertDir, CertName: opts.CertName, KeyName: opts.KeyName}),
		CertFile: filepath.Join(opts.CertDir, opts.CertName),
		KeyFile:  filepath.Join(opts.CertDir, opts.KeyName),
	}
	if err := Setup(ctx, mgr, server, opts); err != nil {
		return nil, err
	}
	if err := mgr.Add(server); err != nil {
		return nil, fmt.Errorf("adding webhook server: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, fmt.Errorf("adding health check: %w", err)
	}
	// Ready once the server answers TLS: certificates loaded, handlers registered.
	if err := mgr.AddReadyzCheck("webhook", server.Checker()); err != nil {
		return nil, fmt.Errorf("adding ready check: %w", err)
	}
	if opts.ShutdownDrain > 0 {
		return &drainingManager{Manager: mgr, server: server, drain: opts.ShutdownDrain}, nil
	}
	return mgr, nil
}

// drainingManager starts draining the webhook server when its context ends
// and stops the manager drain later. The manager's own shutdown stops the
// caches before the webhook server, so the drain must come first.
type drainingManager struct {
	manager.Manager
	server *CertWaitingServer
	drain  time.Duration
}

func (m *drainingManager) Start(ctx context.Context) error {
	running, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	go func() {
		select {
		case <-running.Done():
			return
		case <-ctx.Done():
		}
		m.server.draining.Store(true)
		log.FromContext(ctx).Info("draining: unready, closing connections after each answer", "for", m.drain.String())
		select {
		case <-running.Done():
		case <-time.After(m.drain):
			stop()
		}
	}()
	return m.Manager.Start(running)
}

// nodeForTargets keeps what nodepool.Targets reads of a Node: name,
// labels, provider ID and taints.
func nodeForTargets(obj any) (any, error) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		TypeMeta:   node.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: node.Name, Labels: node.Labels, UID: node.UID, ResourceVersion: node.ResourceVersion},
		Spec:       corev1.NodeSpec{ProviderID: node.Spec.ProviderID, Taints: node.Spec.Taints},
	}, nil
}

// Setup indexes bindings and registers the handlers on the server.
func Setup(ctx context.Context, mgr manager.Manager, server webhook.Server, opts Options) error {
	nmi, err := nodepool.ParseCoverage(cmp.Or(opts.NMINodeSelection, nodepool.DefaultCoverage))
	if err != nil {
		return err
	}
	trusted := sets.New[string]()
	for _, sa := range opts.TrustedServiceAccounts {
		u, err := serviceAccountUsername(sa)
		if err != nil {
			return err
		}
		trusted.Insert(u)
	}
	scopes, err := identity.ParseScopes(opts.IdentityScopes)
	if err != nil {
		return err
	}
	resolver, err := identity.NewResolver(ctx, mgr.GetCache(), mgr.GetAPIReader(), opts.AllowCrossNamespace)
	if err != nil {
		return err
	}
	resolver.AllFederated = opts.Mode == config.ModeFederated
	decoder := admission.NewDecoder(mgr.GetScheme())
	register := func(path string, h admission.Handler) {
		server.Register(path, (&admission.Webhook{Handler: h}).WithRecoverPanic(true))
	}
	var (
		gate  bool
		nodes client.Reader
	)
	switch opts.Mode {
	case config.ModeStandard, "":
		gate, nodes = true, mgr.GetClient()
		// Started with the cache, so that the first admission does not
		// wait for the node informer to sync.
		if _, err := mgr.GetCache().GetInformer(ctx, &corev1.Node{}); err != nil {
			return fmt.Errorf("watching nodes: %w", err)
		}
	case config.ModeManaged, config.ModeFederated:
		if err := addGateReleaser(mgr, mgr.GetLogger().WithName("gates")); err != nil {
			return fmt.Errorf("adding the gate releaser: %w", err)
		}
	default:
		return fmt.Errorf("mode %q: want one of %v", opts.Mode, config.Modes)
	}
	if opts.AdoptPreexistingPods {
		err = mgr.Add(&adopter{reader: mgr.GetAPIReader(), client: mgr.GetClient(), resolver: resolver,
			recorder: mgr.GetEventRecorder("aad-pod-identity-webhook"), configuration: opts.WebhookConfigurationName,
			period: time.Second, log: mgr.GetLogger().WithName("adoption")})
		if err != nil {
			return fmt.Errorf("adding the adoption of pre-existing pods: %w", err)
		}
	}
	register(MutatePodPath, podFrontEnd("mutate-pod", decoder, &PodMutator{Resolver: resolver, Gate: gate, Nodes: nodes, NMI: nmi}))
	register(ValidatePodPath, podFrontEnd("validate-pod", decoder, &PodValidator{Resolver: resolver, Trusted: trusted}))
	register(MutateIdentityPath, crFrontEnd("mutate-azureidentity", "AzureIdentity", decoder, func() *aadv1.AzureIdentity { return &aadv1.AzureIdentity{} },
		SpellingMutator[*aadv1.AzureIdentity]{}))
	register(MutateBindingPath, crFrontEnd("mutate-azureidentitybinding", "AzureIdentityBinding", decoder, func() *aadv1.AzureIdentityBinding { return &aadv1.AzureIdentityBinding{} },
		SpellingMutator[*aadv1.AzureIdentityBinding]{}))
	register(ValidateBindingPath, crFrontEnd("validate-azureidentitybinding", "AzureIdentityBinding", decoder,
		func() *aadv1.AzureIdentityBinding { return &aadv1.AzureIdentityBinding{} }, &BindingValidator{Reader: mgr.GetAPIReader()}))
	register(ValidateIdentityPath, crFrontEnd("validate-azureidentity", "AzureIdentity", decoder,
		func() *aadv1.AzureIdentity { return &aadv1.AzureIdentity{} }, IdentityValidator{Protected: identity.NewProtected(opts.ProtectedIdentities), Scopes: scopes,
			AllFederated: resolver.AllFederated, Federation: opts.Federation}))
	register(ValidateExceptionPath, crFrontEnd("validate-azurepodidentityexception", "AzurePodIdentityException", decoder,
		func() *aadv1.AzurePodIdentityException { return &aadv1.AzurePodIdentityException{} },
		ExceptionValidator{Namespaces: opts.ExceptionNamespaces, Tokens: opts.ExceptionTokens}))
	return nil
}

func serviceAccountUsername(nsName string) (string, error) {
	ns, name, ok := strings.Cut(nsName, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("trusted service account %q: want namespace/name", nsName)
	}
	return "system:serviceaccount:" + ns + ":" + name, nil
}

// CertWaitingServer starts the webhook server only once the serving
// certificate exists, so that a pod started before cert-manager has issued
// its certificate waits (unready) instead of crash-looping. The server itself
// reloads the certificate when it is rotated.
type CertWaitingServer struct {
	webhook.Server
	CertFile, KeyFile string
	// draining: shutting down; answers ask the client to close the
	// connection (drainingManager).
	draining atomic.Bool
}

// errNoCertificate says why a webhook without its certificate is not ready.
var errNoCertificate = errors.New("no serving certificate yet: with cert-manager, its Certificate has not been issued " +
	"(is cert-manager running? see `kubectl describe certificate` in the release namespace); " +
	"with webhook.certRotation.enabled, the rotator has not written it")

// Checker is the readiness check: ready once the server answers TLS, and
// until the certificate exists an error that says why it does not.
func (s *CertWaitingServer) Checker() healthz.Checker {
	started := s.StartedChecker()
	return func(req *http.Request) error {
		if s.draining.Load() {
			return errors.New("shutting down")
		}
		if !fileExists(s.CertFile) || !fileExists(s.KeyFile) {
			return fmt.Errorf("%s: %w", s.CertFile, errNoCertificate)
		}
		return started(req)
	}
}

// Register serves hook on path; while draining, each answer closes its
// connection, so that no client sends on a connection the shutdown closes.
func (s *CertWaitingServer) Register(path string, hook http.Handler) {
	s.Server.Register(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		hook.ServeHTTP(w, r)
	}))
}

// Start waits for the certificate, then serves until ctx ends.
func (s *CertWaitingServer) Start(ctx context.Context) error {
	logger := log.FromContext(ctx).WithValues("certFile", s.CertFile)
	for tick, n := time.NewTicker(time.Second), 0; ; n++ {
		if fileExists(s.CertFile) && fileExists(s.KeyFile) {
			tick.Stop()
			break
		}
		if n%30 == 0 {
			logger.Info("waiting for the serving certificate; not ready until it exists", "reason", errNoCertificate.Error())
		}
		select {
		case <-ctx.Done():
			tick.Stop()
			return nil
		case <-tick.C:
		}
	}
	return s.Server.Start(ctx)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
