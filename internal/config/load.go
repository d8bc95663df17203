package config

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// Load reads, defaults and validates the file at path; an empty path is
// the defaults alone. Unknown fields are refused by name, so that a typo
// cannot silently leave a setting at its default. namespace is the
// component's own (the release's), which some defaults name.
func Load(path, namespace string) (*Configuration, error) {
	c := &Configuration{TypeMeta: metav1.TypeMeta{APIVersion: APIVersion, Kind: Kind}}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading configuration: %w", err)
		}
		if c, err = Decode(data); err != nil {
			return nil, fmt.Errorf("configuration %s: %w", path, err)
		}
	}
	SetDefaults(c, namespace)
	if errs := Validate(c); len(errs) > 0 {
		return nil, fmt.Errorf("configuration %s: %w", cmp.Or(path, "(defaults)"), errs.ToAggregate())
	}
	return c, nil
}

// Decode reads a configuration strictly: its apiVersion and kind must be
// this package's, and every field must be known.
func Decode(data []byte) (*Configuration, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	var c Configuration
	strict, err := sigsjson.UnmarshalStrict(js, &c, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("decoding: %w", errors.Join(strict...))
	}
	if c.APIVersion != APIVersion || c.Kind != Kind {
		return nil, fmt.Errorf("apiVersion %q, kind %q: want %s, %s", c.APIVersion, c.Kind, APIVersion, Kind)
	}
	return &c, nil
}

// The defaults: the chart renders them too, and a chart test keeps the two
// equal.
var (
	defaultExceptionNamespaces  = []string{"kube-system"}
	defaultAllowedMetadataPaths = []string{"/metadata/instance", "/metadata/versions"}
	// DefaultNMINodeSelection is the chart's NMI DaemonSet: Linux nodes
	// (NMI's only platform), whatever their taints.
	DefaultNMINodeSelection = NodeSelection{
		NodeSelector: map[string]string{corev1.LabelOSStable: "linux"},
		Tolerations:  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
	}
)

// DefaultTokenCacheSize holds a full node's working set: user-assigned
// identities' tokens are shared by the pods (identities times resources,
// 50 at the density benchmark's 250 pods), federated ones are each pod's
// own, and 2,000 is 250 pods (AKS's maximum) with 8 identity-resource pairs
// each, in about 6 MB of NMI's RSS; 10,000 would take about 30 MB past the
// 50 MiB goal for tokens no node asks for (docs/performance.md).
const DefaultTokenCacheSize = 2000

// SetDefaults fills what c leaves unset; namespace is the release's.
func SetDefaults(c *Configuration, namespace string) {
	p := &c.Policy
	setDefault(&p.Mode, ModeStandard)
	if p.Mode == ModeFederated {
		p.Federation.Enabled = true
	}
	if p.Exceptions.Namespaces == nil {
		p.Exceptions.Namespaces = defaultExceptionNamespaces
	}
	setDefault(&p.Exceptions.Tokens, ExceptionTokensNode)
	if p.NMINodeSelection == nil {
		p.NMINodeSelection = &DefaultNMINodeSelection
	}

	w := &c.Webhook
	setDefault(&w.ConfigurationName, "aad-pod-identity")
	if w.TrustedServiceAccounts == nil {
		// A process outside a pod (nmi cleanup, tests) has no namespace.
		ns := cmp.Or(namespace, "default")
		w.TrustedServiceAccounts = []string{ns + "/aad-pod-identity-webhook", ns + "/aad-pod-identity-assigner"}
	}
	setDefault(&w.AdoptPreexistingPods, ptr.To(true))
	setDefault(&w.ShutdownDrain, duration(5*time.Second))
	setDefault(&w.CertRotation.SecretName, "aad-pod-identity-webhook-cert")
	setDefault(&w.CertRotation.ServiceName, "aad-pod-identity-webhook")

	a := &c.Assigner
	setDefault(&a.GCGracePeriod, duration(5*time.Minute))
	setDefault(&a.DriftCheckPeriod, duration(3*time.Minute))
	setDefault(&a.BatchWindow, duration(500*time.Millisecond))
	setDefault(&a.ARMPollInterval, duration(time.Second))
	setDefault(&a.MaxConcurrentPools, 8)
	setDefault(&a.LeaderElect, ptr.To(true))
	setDefault(&a.KubeAPIQPS, 500)
	setDefault(&a.KubeAPIBurst, 1000)

	n := &c.NMI
	setDefault(&n.SyncPeriod, duration(time.Minute))
	setDefault(&n.IPTablesBackend, "auto")
	if n.AllowedMetadataPaths == nil {
		n.AllowedMetadataPaths = defaultAllowedMetadataPaths
	}
	// With criSocket the runtime finds a new pod at once; without it, see
	// the chart's nmi.unknownCallerWait.
	setDefault(&n.UnknownCallerWait, duration(5*time.Second))
	setDefault(&n.UncachedTokenRate, ptr.To(10.0))
	setDefault(&n.UncachedTokenBurst, 50)
	setDefault(&n.MaxConnectionsPerIP, ptr.To[int32](64))
	setDefault(&n.MaxWaitingRequests, ptr.To[int32](1000))
	setDefault(&n.TokenCacheSize, DefaultTokenCacheSize)
	setDefault(&n.UpstreamIdleConnections, 64)
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

func duration(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

// Modes are the supported policy modes.
var Modes = []Mode{ModeStandard, ModeManaged, ModeFederated}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

var serviceAccountRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$`)

// Validate returns every invalid field of a defaulted c, by path.
func Validate(c *Configuration) field.ErrorList {
	var errs field.ErrorList
	p, pp := c.Policy, field.NewPath("policy")
	if !slices.Contains(Modes, p.Mode) {
		errs = append(errs, field.NotSupported(pp.Child("mode"), p.Mode, Modes))
	}
	if p.Federation.Enabled && !uuidRE.MatchString(p.Federation.TenantID) {
		errs = append(errs, field.Invalid(pp.Child("federation", "tenantID"), p.Federation.TenantID, "federation needs the Azure AD tenant's ID (a GUID: az account show --query tenantId)"))
	}
	for ns, scopes := range p.IdentityScopes {
		for i, s := range scopes {
			if _, err := identity.ParseScopes([]string{ns + "=" + s}); err != nil {
				errs = append(errs, field.Invalid(pp.Child("identityScopes").Key(ns).Index(i), s, err.Error()))
			}
		}
	}
	if _, err := nodepool.ParseCoverage(p.NMINodeSelection.JSON()); err != nil {
		errs = append(errs, field.Invalid(pp.Child("nmiNodeSelection"), p.NMINodeSelection.JSON(), err.Error()))
	}
	switch p.Exceptions.Tokens {
	case ExceptionTokensNone, ExceptionTokensNode, ExceptionTokensAny:
	default:
		errs = append(errs, field.NotSupported(pp.Child("exceptions", "tokens"), p.Exceptions.Tokens, []ExceptionTokens{ExceptionTokensNone, ExceptionTokensNode, ExceptionTokensAny}))
	}

	wp := field.NewPath("webhook")
	for i, sa := range c.Webhook.TrustedServiceAccounts {
		if !serviceAccountRE.MatchString(sa) {
			errs = append(errs, field.Invalid(wp.Child("trustedServiceAccounts").Index(i), sa, "want namespace/name"))
		}
	}
	errs = append(errs, nonNegative(wp.Child("shutdownDrain"), c.Webhook.ShutdownDrain)...)

	a, ap := c.Assigner, field.NewPath("assigner")
	for name, d := range map[string]*metav1.Duration{"gcGracePeriod": a.GCGracePeriod, "driftCheckPeriod": a.DriftCheckPeriod, "batchWindow": a.BatchWindow} {
		errs = append(errs, positive(ap.Child(name), d)...)
	}
	if a.ARMPollInterval.Duration < time.Second {
		errs = append(errs, field.Invalid(ap.Child("armPollInterval"), a.ARMPollInterval.Duration.String(), "below azcore's minimum of 1s"))
	}
	for name, v := range map[string]int32{"maxConcurrentPools": a.MaxConcurrentPools, "kubeAPIQPS": a.KubeAPIQPS, "kubeAPIBurst": a.KubeAPIBurst} {
		if v < 1 {
			errs = append(errs, field.Invalid(ap.Child(name), v, "must be at least 1"))
		}
	}

	n, np := c.NMI, field.NewPath("nmi")
	errs = append(errs, positive(np.Child("syncPeriod"), n.SyncPeriod)...)
	errs = append(errs, nonNegative(np.Child("unknownCallerWait"), n.UnknownCallerWait)...)
	switch n.IPTablesBackend {
	case "auto", "legacy", "nft", "path":
	default:
		errs = append(errs, field.NotSupported(np.Child("iptablesBackend"), n.IPTablesBackend, []string{"auto", "legacy", "nft", "path"}))
	}
	for i, path := range n.AllowedMetadataPaths {
		if !strings.HasPrefix(path, "/") {
			errs = append(errs, field.Invalid(np.Child("allowedMetadataPaths").Index(i), path, "must start with /"))
		}
	}
	if *n.UncachedTokenRate < 0 {
		errs = append(errs, field.Invalid(np.Child("uncachedTokenRate"), *n.UncachedTokenRate, "must not be negative"))
	}
	for name, v := range map[string]int32{"uncachedTokenBurst": n.UncachedTokenBurst - 1, "maxConnectionsPerIP": *n.MaxConnectionsPerIP, "maxWaitingRequests": *n.MaxWaitingRequests, "tokenCacheSize": n.TokenCacheSize - 1, "upstreamIdleConnections": n.UpstreamIdleConnections - 1} {
		if v < 0 {
			errs = append(errs, field.Invalid(np.Child(name), v, "out of range"))
		}
	}
	return errs
}

func positive(path *field.Path, d *metav1.Duration) field.ErrorList {
	if d.Duration <= 0 {
		return field.ErrorList{field.Invalid(path, d.Duration.String(), "must be positive")}
	}
	return nil
}

func nonNegative(path *field.Path, d *metav1.Duration) field.ErrorList {
	if d.Duration < 0 {
		return field.ErrorList{field.Invalid(path, d.Duration.String(), "must not be negative")}
	}
	return nil
}

// ScopeEntries are IdentityScopes as namespace=scope entries, sorted.
func (p Policy) ScopeEntries() []string {
	var out []string
	for _, ns := range slices.Sorted(maps.Keys(p.IdentityScopes)) {
		for _, s := range p.IdentityScopes[ns] {
			out = append(out, ns+"="+s)
		}
	}
	return out
}

// JSON is the selection as the components' parsers read it.
func (s *NodeSelection) JSON() string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // plain data
	}
	return string(b)
}
