// Package config is the components' versioned configuration: one file,
// rendered by the chart into one ConfigMap, that the webhook, the assigner
// and NMI all read. Policy every component must apply alike lives in one
// section; each component has its own for the rest. Flags remain for the
// process (addresses, endpoints, file locations, kubeconfig, logging,
// --config). A setting has one default, here.
package config

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// Group and Version name the configuration API; Kind is its only kind.
	Group   = "config.aadpodidentity.k8s.io"
	Version = "v1alpha1"
	Kind    = "Configuration"
)

// APIVersion is what a configuration file's apiVersion must say.
var APIVersion = Group + "/" + Version

// Configuration is the whole file.
type Configuration struct {
	metav1.TypeMeta `json:",inline"`

	// Policy is read by every component: they decide alike or not at all.
	Policy Policy `json:"policy"`
	// Webhook, Assigner and NMI are each read by their component (and, for
	// a few named fields, by another that must agree with it).
	Webhook  Webhook  `json:"webhook"`
	Assigner Assigner `json:"assigner"`
	NMI      NMI      `json:"nmi"`
}

// Mode says who puts user-assigned identities on the node pools.
type Mode string

const (
	// ModeStandard: the assigner, which records each assignment; pods are
	// gated until their identities are in place.
	ModeStandard Mode = "standard"
	// ModeManaged: the cluster's admins (as with the AKS add-on); no
	// assigner, no gate, and NMI checks the pairing on IMDS's token.
	ModeManaged Mode = "managed"
	// ModeFederated: nobody; NMI exchanges each pod's service-account token
	// for its identities' tokens (workload identity federation). No
	// assigner, no gate, no identity on any node pool.
	ModeFederated Mode = "federated"
)

// ExceptionTokens is what an AzurePodIdentityException grants.
type ExceptionTokens string

const (
	// ExceptionTokensNone: the node's instance metadata, no tokens.
	ExceptionTokensNone ExceptionTokens = "none"
	// ExceptionTokensNode: the node's own identity only.
	ExceptionTokensNode ExceptionTokens = "node"
	// ExceptionTokensAny: IMDS unchanged, every identity on the pool.
	ExceptionTokensAny ExceptionTokens = "any"
)

// Policy is the identity policy the three components share.
type Policy struct {
	// Mode is standard, managed or federated.
	Mode Mode `json:"mode,omitempty"`
	// Federation serves user-assigned identities through workload identity
	// federation: all of them in mode federated, else those annotated
	// aadpodidentity.k8s.io/federated: "true".
	Federation Federation `json:"federation"`
	// AllowCrossNamespace lets pods match AzureIdentityBindings in every
	// namespace (releases before this design); off, a binding matches only
	// pods of its namespace.
	AllowCrossNamespace bool `json:"allowCrossNamespace,omitempty"`
	// ProtectedIdentities are client or resource IDs of the cluster's own
	// identities: AzureIdentities naming them are refused and NMI serves
	// them to no pod.
	ProtectedIdentities []string `json:"protectedIdentities,omitempty"`
	// IdentityScopes maps a namespace (or * for every namespace without an
	// entry) to the scopes its user-assigned identities must live under
	// (/subscriptions/<id> or /subscriptions/<id>/resourceGroups/<group>).
	// Empty: no restriction.
	IdentityScopes map[string][]string `json:"identityScopes,omitempty"`
	// Exceptions scopes AzurePodIdentityExceptions.
	Exceptions Exceptions `json:"exceptions"`
	// ServeExternalIdentities serves user-assigned identities that were on
	// the pool before the assigner needed them.
	ServeExternalIdentities bool `json:"serveExternalIdentities,omitempty"`
	// NMINodeSelection is NMI's DaemonSet node selection: identities go only
	// onto the pools of nodes NMI runs on, and a labelled pod that can only
	// run elsewhere is refused.
	NMINodeSelection *NodeSelection `json:"nmiNodeSelection,omitempty"`
}

// Federation is workload identity federation: NMI asks for a service-account
// token bound to the calling pod and exchanges it at Azure AD.
type Federation struct {
	// Enabled lets NMI request service-account tokens (on in mode
	// federated); off, a federated AzureIdentity is refused.
	Enabled bool `json:"enabled,omitempty"`
	// TenantID is the Azure AD tenant of federated identities whose
	// AzureIdentity names none (the walkthrough's do not).
	TenantID string `json:"tenantID,omitempty"`
}

// Exceptions scopes AzurePodIdentityExceptions: whoever may create one in
// a namespace decides which pods there bypass admission.
type Exceptions struct {
	// Namespaces whose exceptions count; * is every namespace.
	Namespaces []string `json:"namespaces,omitempty"`
	// Tokens is what an exception grants: none, node or any.
	Tokens ExceptionTokens `json:"tokens,omitempty"`
	// NodeIdentityClientIDs are the node's own identities (the kubelet's),
	// which exception pods may name with tokens node.
	NodeIdentityClientIDs []string `json:"nodeIdentityClientIDs,omitempty"`
}

// NodeSelection is a DaemonSet's node selection.
type NodeSelection struct {
	NodeSelector map[string]string   `json:"nodeSelector,omitempty"`
	Affinity     *corev1.Affinity    `json:"affinity,omitempty"`
	Tolerations  []corev1.Toleration `json:"tolerations,omitempty"`
}

// Webhook configures the admission webhook.
type Webhook struct {
	// ConfigurationName is the release's Mutating- and
	// ValidatingWebhookConfiguration: its creation dates the installation
	// (pod adoption, and the assigner's trust in 1.x records).
	ConfigurationName string `json:"configurationName,omitempty"`
	// TrustedServiceAccounts (namespace/name) may change a pod's label,
	// annotations and gate after creation.
	TrustedServiceAccounts []string `json:"trustedServiceAccounts,omitempty"`
	// AdoptPreexistingPods annotates, once per start, the labelled pods
	// created before the installation.
	AdoptPreexistingPods *bool `json:"adoptPreexistingPods,omitempty"`
	// ShutdownDrain is how long the webhook keeps serving, unready, after
	// SIGTERM.
	ShutdownDrain *metav1.Duration `json:"shutdownDrain,omitempty"`
	// CertRotation issues the serving certificate without cert-manager.
	CertRotation CertRotation `json:"certRotation"`
}

// CertRotation is the built-in serving certificate.
type CertRotation struct {
	Enabled bool `json:"enabled,omitempty"`
	// SecretName is the Secret, in the webhook's namespace, holding the CA
	// and serving certificate.
	SecretName string `json:"secretName,omitempty"`
	// ServiceName is the webhook's Service the certificate is issued for.
	ServiceName string `json:"serviceName,omitempty"`
}

// Assigner configures the assigner.
type Assigner struct {
	// ImmutableIdentities (client or resource IDs) are never removed from a
	// pool.
	ImmutableIdentities []string `json:"immutableIdentities,omitempty"`
	// GCGracePeriod is how long an identity no pod needs stays on a pool.
	GCGracePeriod *metav1.Duration `json:"gcGracePeriod,omitempty"`
	// DriftCheckPeriod is how often pools are re-read.
	DriftCheckPeriod *metav1.Duration `json:"driftCheckPeriod,omitempty"`
	// BatchWindow is the longest new identities wait for more pods before
	// the write.
	BatchWindow *metav1.Duration `json:"batchWindow,omitempty"`
	// ARMPollInterval paces ARM's long-running operations when ARM sends no
	// Retry-After (at least 1s, azcore's minimum).
	ARMPollInterval *metav1.Duration `json:"armPollInterval,omitempty"`
	// MaxConcurrentPools is how many pools are read and written at once.
	MaxConcurrentPools int32 `json:"maxConcurrentPools,omitempty"`
	// LeaderElect elects a leader so that one replica writes to ARM.
	LeaderElect *bool `json:"leaderElect,omitempty"`
	// KubeAPIQPS and KubeAPIBurst pace requests to the API server.
	KubeAPIQPS   int32 `json:"kubeAPIQPS,omitempty"`
	KubeAPIBurst int32 `json:"kubeAPIBurst,omitempty"`
}

// NMI configures the node agent.
type NMI struct {
	// SyncPeriod is how often the iptables rules are checked and repaired.
	SyncPeriod *metav1.Duration `json:"syncPeriod,omitempty"`
	// IPTablesBackend is auto, legacy, nft or path.
	IPTablesBackend string `json:"iptablesBackend,omitempty"`
	// FlushConntrack drops tracked connections to the metadata IP once the
	// rules are in.
	FlushConntrack bool `json:"flushConntrack,omitempty"`
	// CNICacheDir turns on the anti-spoofing chain (libcni's results cache).
	CNICacheDir string `json:"cniCacheDir,omitempty"`
	// CRISocket confirms each caller with the container runtime.
	CRISocket string `json:"criSocket,omitempty"`
	// RemoveStartupTaint lifts aadpodidentity.k8s.io/nmi-not-ready from the
	// node once interception is in place.
	RemoveStartupTaint bool `json:"removeStartupTaint,omitempty"`
	// AllowedMetadataPaths (and their sub-paths) are proxied for every pod.
	AllowedMetadataPaths []string `json:"allowedMetadataPaths,omitempty"`
	// EnableServicePrincipals serves type 1 and 2 AzureIdentities.
	EnableServicePrincipals bool `json:"enableServicePrincipals,omitempty"`
	// AllowCrossNamespaceSecrets lets an AzureIdentity use a Secret of
	// another namespace.
	AllowCrossNamespaceSecrets bool `json:"allowCrossNamespaceSecrets,omitempty"`
	// UnknownCallerWait is how long a request from an address no pod has
	// yet waits for the pod's IP to be reported.
	UnknownCallerWait *metav1.Duration `json:"unknownCallerWait,omitempty"`
	// UncachedTokenRate and UncachedTokenBurst limit, per pod, the token
	// requests that miss the cache (rate 0: no limit).
	UncachedTokenRate  *float64 `json:"uncachedTokenRate,omitempty"`
	UncachedTokenBurst int32    `json:"uncachedTokenBurst,omitempty"`
	// MaxConnectionsPerIP caps open connections from one address (0: none).
	MaxConnectionsPerIP *int32 `json:"maxConnectionsPerIP,omitempty"`
	// MaxWaitingRequests caps the requests waiting at once (0: none).
	MaxWaitingRequests *int32 `json:"maxWaitingRequests,omitempty"`
	// TokenCacheSize bounds the cached tokens.
	TokenCacheSize int32 `json:"tokenCacheSize,omitempty"`
	// UpstreamIdleConnections is how many idle connections are kept to IMDS
	// and to each Azure AD authority.
	UpstreamIdleConnections int32 `json:"upstreamIdleConnections,omitempty"`
}
