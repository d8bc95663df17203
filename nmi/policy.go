package nmi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// tokenCall is one token request as the policy judges it: each rule reads
// what earlier rules found and adds what it finds.
type tokenCall struct {
	ip     string
	header http.Header
	query  url.Values
	pod    *corev1.Pod
	// exempt: an AzurePodIdentityException decided the call; passthrough is
	// the query sent to IMDS (nil: the pod's own).
	exempt      bool
	passthrough url.Values
	req         tokenRequest
	ent         entitlement
	id          *aadv1.AzureIdentity
	// verify checks a fetched token before it is cached; explain rewrites a
	// fetch error for the pod (both nil: nothing to add).
	verify  func(Token, *aadv1.AzureIdentity) error
	explain func(context.Context, *corev1.Pod, *aadv1.AzureIdentity, error) error
	// federated: the token comes from Azure AD for the pod's own
	// service-account token, not from IMDS.
	federated bool
}

// rule is one step of the token policy. A rule refuses the call with an
// error (an *apiError for the caller), or lets it go on.
type rule interface {
	// name and why are what the policy's printout shows.
	name() string
	why() string
	check(ctx context.Context, c *tokenCall) error
}

// tokenPolicy is the ordered list of rules a token request passes before NMI
// fetches its token. The order is part of the policy: a rule relies on
// what the rules before it established.
type tokenPolicy []rule

// decide runs the rules in order; the first error refuses the call, and an
// exception ends the list early.
func (p tokenPolicy) decide(ctx context.Context, c *tokenCall) error {
	for _, r := range p {
		if err := r.check(ctx, c); err != nil {
			return err
		}
		if c.exempt {
			return nil
		}
	}
	return nil
}

// String prints the policy one rule a line, for reviewers (TestPolicies).
func (p tokenPolicy) String() string {
	var b strings.Builder
	for i, r := range p {
		fmt.Fprintf(&b, "%d. %s: %s\n", i+1, r.name(), r.why())
	}
	return b.String()
}

// newPolicy is the token policy of a mode: standard mode trusts the
// assigner's record for a user-assigned identity, managed mode the token
// IMDS issues, and a federated identity is served in any mode by Azure AD
// for the pod's own service account.
func newPolicy(s *Server) tokenPolicy {
	p := tokenPolicy{
		knownCaller{s},
		exceptionPods{s.exceptions, s.reader},
		wellFormed{},
		admittedAndBound{s.reader, s.resolver},
		namedIdentity{},
		notProtected{s.protected},
		inScope{s.scopes},
		federated{s.federation, s.mode == config.ModeFederated},
	}
	switch s.mode {
	case config.ModeManaged:
		return append(p, pairedOnToken{s.managed})
	case config.ModeFederated:
		return p
	}
	return append(p, recorded{s.assignments})
}

// knownCaller finds the pod calling from the request's source address.
type knownCaller struct{ s *Server }

func (knownCaller) name() string { return "known-caller" }
func (knownCaller) why() string {
	return "the source address is a live pod on this node (confirmed with the container runtime when NMI has its socket)"
}

func (r knownCaller) check(ctx context.Context, c *tokenCall) (err error) {
	c.pod, err = r.s.caller(ctx, c.ip)
	return err
}

// exceptionPods gives a pod an AzurePodIdentityException matches what the
// exception policy grants, instead of its own identities.
type exceptionPods struct {
	exceptions ExceptionPolicy
	reader     client.Reader
}

func (exceptionPods) name() string { return "exception" }
func (exceptionPods) why() string {
	return "a pod an AzurePodIdentityException matches gets what policy.exceptions.tokens grants, and no rule below applies"
}

func (r exceptionPods) check(ctx context.Context, c *tokenCall) error {
	exempt, err := r.exceptions.isException(ctx, r.reader, c.pod)
	if err != nil || !exempt {
		return err
	}
	q, err := r.exceptions.tokenQuery(c.header, c.query)
	if err != nil {
		return err
	}
	c.exempt, c.passthrough = true, q
	return nil
}

// wellFormed parses the request as IMDS would, refusing what IMDS might
// read differently.
type wellFormed struct{}

func (wellFormed) name() string { return "well-formed" }
func (wellFormed) why() string {
	return "the Metadata header, one api-version and one resource, at most one of client_id, mi_res_id and msi_res_id, and no selector NMI cannot check (object_id, principal_id)"
}

func (wellFormed) check(_ context.Context, c *tokenCall) (err error) {
	c.req, err = parseTokenRequest(c.header, c.query)
	return err
}

// admittedAndBound finds the identities the pod was admitted for that its label
// still resolves to.
type admittedAndBound struct {
	reader   client.Reader
	resolver *identity.Resolver
}

func (admittedAndBound) name() string { return "admitted" }
func (admittedAndBound) why() string {
	return "the identities of the pod's admission annotation that still exist and that its label still resolves to through the current bindings"
}

func (r admittedAndBound) check(ctx context.Context, c *tokenCall) (err error) {
	c.ent, err = podIdentities(ctx, r.reader, r.resolver, c.pod)
	return err
}

// namedIdentity picks the identity the request names among the admitted
// ones.
type namedIdentity struct{}

func (namedIdentity) name() string { return "named-identity" }
func (namedIdentity) why() string {
	return "the identity the request names is one of those, or it names none and there is exactly one"
}

func (namedIdentity) check(_ context.Context, c *tokenCall) (err error) {
	c.id, err = selectIdentity(c.req, c.ent)
	return err
}

// notProtected refuses the cluster's own identities, whatever an
// AzureIdentity names.
type notProtected struct{ protected identity.Protected }

func (notProtected) name() string { return "not-protected" }
func (notProtected) why() string {
	return "the identity is none of the cluster's own (policy.protectedIdentities, node identities, the kubelet's from azure.json)"
}

func (r notProtected) check(_ context.Context, c *tokenCall) error {
	if f := r.protected.Named(c.id); f != "" {
		return forbidden("protected_identity", "AzureIdentity %s/%s names in spec.%s one of the cluster's own identities, which NMI serves to no pod", c.id.Namespace, c.id.Name, f)
	}
	return nil
}

// inScope refuses identities outside where the admin lets the namespace's
// identities live.
type inScope struct{ scopes identity.Scopes }

func (inScope) name() string { return "in-scope" }
func (inScope) why() string {
	return "a user-assigned identity lives under a scope policy.identityScopes allows for its namespace"
}

func (r inScope) check(_ context.Context, c *tokenCall) error {
	if err := r.scopes.Check(c.id); err != nil {
		return forbidden("identity_out_of_scope", "AzureIdentity %s/%s: %s", c.id.Namespace, c.id.Name, err)
	}
	return nil
}

// federated marks a federated identity, which no record or pool vouches
// for: Azure AD issues its token only for the service account its federated
// credential names, and NMI asks for a service-account token bound to the
// calling pod.
type federated struct {
	federation *federation // nil: policy.federation.enabled is off
	all        bool        // policy mode federated
}

func (federated) name() string { return "federated" }
func (federated) why() string {
	return "a federated identity (mode federated, or annotated aadpodidentity.k8s.io/federated) is exchanged at Azure AD for a token of the pod's own service account bound to the pod; refused while policy.federation.enabled is off"
}

func (r federated) check(_ context.Context, c *tokenCall) error {
	if !identity.Federated(c.id, r.all) {
		return nil
	}
	if r.federation == nil {
		return forbidden("federation_disabled", "AzureIdentity %s/%s is federated (annotation %s), but NMI serves federated identities only with the chart's policy.federation.enabled: true", c.id.Namespace, c.id.Name, aadv1.AnnotationFederated)
	}
	c.federated = true
	return nil
}

// recorded (standard mode) serves a user-assigned identity only when the
// assigner's record of this node's pool vouches for it.
type recorded struct{ assignments *assignments }

func (recorded) name() string { return "recorded" }
func (recorded) why() string {
	return "a user-assigned identity is Assigned, with this client ID, in the assigner's record of this node's pool (waits while it is being assigned)"
}

func (r recorded) check(ctx context.Context, c *tokenCall) error {
	if c.id.Spec.Type != aadv1.UserAssignedMSI || c.federated {
		return nil
	}
	return r.assignments.check(ctx, c.id)
}

// pairedOnToken (managed mode, where no record vouches) checks a
// user-assigned identity on the token IMDS issues for it.
type pairedOnToken struct{ managed *managedIdentities }

func (pairedOnToken) name() string { return "paired-on-token" }
func (pairedOnToken) why() string {
	return "a user-assigned identity's token names the AzureIdentity's resource ID (xms_mirid), checked before it is cached; an identity missing from the pool gets an IdentityNotAssigned event"
}

func (r pairedOnToken) check(_ context.Context, c *tokenCall) error {
	if c.id.Spec.Type == aadv1.UserAssignedMSI && !c.federated {
		c.verify, c.explain = checkPairing, r.managed.notAssigned
	}
	return nil
}
