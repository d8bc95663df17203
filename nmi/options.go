package nmi

import (
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"k8s.io/apimachinery/pkg/util/wait"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// Options configure NMI; cmd/nmi maps its flags and configuration file
// onto them.
type Options struct {
	NodeName             string
	ListenAddress        string
	MetricsAddr          string
	ProbeAddr            string
	IMDSEndpoint         string
	AADAuthorityHost     string
	RemoveStartupTaint   bool
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
	// TokenCacheSize bounds the cached tokens (0: config.DefaultTokenCacheSize).
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
	// Mode is config.ModeStandard (the assigner assigns and records identities),
	// config.ModeManaged (admins assign them; no records) or
	// config.ModeFederated (every user-assigned identity is federated).
	Mode config.Mode
	// Federation serves federated identities (on in mode federated):
	// service-account tokens bound to the calling pod, exchanged at
	// AADAuthorityHost in FederationTenantID unless the AzureIdentity names
	// its tenant.
	Federation         bool
	FederationTenantID string
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

	// Rules owns the node's interception rules (nmi/intercept's Keeper).
	Rules Interceptor

	// IMDSTransport and AADTransport replace the real ones in tests.
	IMDSTransport http.RoundTripper
	AADTransport  policy.Transporter
}

// DefaultIdentityNotFoundRetry waits about 15 s in all for an assignment to
// reach the VM.
var DefaultIdentityNotFoundRetry = wait.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Steps: 7, Cap: 4 * time.Second}

// Interceptor owns the node's rules that send pods' metadata traffic to
// NMI (nmi/intercept's Keeper): nothing is served before Install returns,
// and Keep repairs the rules, and with GuardsPods follows podsChanged,
// until ctx ends.
type Interceptor interface {
	Install() error
	GuardsPods() bool
	Keep(ctx context.Context, podsChanged <-chan struct{}) error
}

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
