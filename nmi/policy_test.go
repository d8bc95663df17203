package nmi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// TestPolicies prints each mode's token policy, the whole of what decides
// whether a pod gets a token, and checks docs/nmi.md shows the same.
func TestPolicies(t *testing.T) {
	doc, err := os.ReadFile("../docs/nmi.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range config.Modes {
		got := newPolicy(&Server{mode: mode}).String()
		t.Logf("%s mode:\n%s", mode, got)
		begin, end := "<!-- token policy: "+string(mode)+" -->\n", "<!-- end token policy -->"
		_, section, ok := strings.Cut(string(doc), begin)
		section, _, ok2 := strings.Cut(section, end)
		if !ok || !ok2 {
			t.Errorf("docs/nmi.md has no section between %q and %q", begin, end)
			continue
		}
		if section != got {
			t.Errorf("docs/nmi.md's %s policy differs from the code's; write there:\n%s", mode, got)
		}
	}
}

// stub is a rule that records it ran and returns err, or exempts the call.
type stub struct {
	ran   *[]string
	label string
	err   error
}

func (s stub) name() string { return s.label }
func (stub) why() string    { return "test" }
func (s stub) check(context.Context, *tokenCall) error {
	*s.ran = append(*s.ran, s.label)
	return s.err
}

type exemptingStub struct{ stub }

func (s exemptingStub) check(ctx context.Context, c *tokenCall) error {
	c.exempt = true
	return s.stub.check(ctx, c)
}

func TestPolicyDecide(t *testing.T) {
	refused := errors.New("refused")
	for _, tt := range []struct {
		name    string
		rules   func(ran *[]string) tokenPolicy
		wantRan string
		wantErr error
	}{
		{"all pass", func(ran *[]string) tokenPolicy {
			return tokenPolicy{stub{ran: ran, label: "a"}, stub{ran: ran, label: "b"}}
		}, "a b", nil},
		{"the first refusal ends it", func(ran *[]string) tokenPolicy {
			return tokenPolicy{stub{ran: ran, label: "a", err: refused}, stub{ran: ran, label: "b"}}
		}, "a", refused},
		{"an exception ends it, allowed", func(ran *[]string) tokenPolicy {
			return tokenPolicy{exemptingStub{stub{ran: ran, label: "a"}}, stub{ran: ran, label: "b", err: refused}}
		}, "a", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var ran []string
			err := tt.rules(&ran).decide(context.Background(), &tokenCall{})
			if !errors.Is(err, tt.wantErr) || strings.Join(ran, " ") != tt.wantRan {
				t.Errorf("ran %v, error %v; want %q, %v", ran, err, tt.wantRan, tt.wantErr)
			}
		})
	}
}

// resG is a user-assigned identity in group g.

// reasonOf is the refusal reason of err ("" for nil).
func reasonOf(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an answer for the caller", err)
	}
	return ae.reason
}

const resG = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a"

func TestRuleWellFormed(t *testing.T) {
	for _, tt := range []struct {
		name   string
		header bool
		query  string
		want   string
	}{
		{"a plain request", true, "api-version=2018-02-01&resource=https://vault.azure.net", ""},
		{"no Metadata header", false, "api-version=2018-02-01&resource=https://vault.azure.net", "missing_metadata_header"},
		{"no resource", true, "api-version=2018-02-01", "missing_query_variable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tt.query)
			c := &tokenCall{header: http.Header{}, query: q}
			if tt.header {
				c.header.Set("Metadata", "true")
			}
			if got := reasonOf(t, wellFormed{}.check(context.Background(), c)); got != tt.want {
				t.Errorf("reason %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRuleNotProtected(t *testing.T) {
	r := notProtected{identity.NewProtected([]string{"KUBELET-CLIENT", resG})}
	for _, tt := range []struct {
		name, clientID, resourceID string
		want                       string
	}{
		{"another identity", "client-b", "", ""},
		{"the kubelet's client ID in another case", "kubelet-client", "", "protected_identity"},
		{"a protected resource ID", "client-b", strings.ToUpper(resG), "protected_identity"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := azureIdentity("id", tt.clientID, tt.resourceID)
			if got := reasonOf(t, r.check(context.Background(), &tokenCall{id: &id})); got != tt.want {
				t.Errorf("reason %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRuleInScope(t *testing.T) {
	scopes, err := identity.ParseScopes([]string{"ns=/subscriptions/s/resourceGroups/g"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, resourceID, want string
	}{
		{"under the namespace's scope", resG, ""},
		{"in another group", strings.Replace(resG, "/g/", "/other/", 1), "identity_out_of_scope"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := azureIdentity("id", "client-a", tt.resourceID)
			if got := reasonOf(t, inScope{scopes}.check(context.Background(), &tokenCall{id: &id})); got != tt.want {
				t.Errorf("reason %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRuleNamedIdentity(t *testing.T) {
	a, b := azureIdentity("a", "client-a", resG), azureIdentity("b", "client-b", "")
	for _, tt := range []struct {
		name     string
		req      tokenRequest
		admitted []aadv1.AzureIdentity
		want     string // the identity picked, or the refusal reason
	}{
		{"the only one", tokenRequest{}, []aadv1.AzureIdentity{a}, "a"},
		{"named by client ID", tokenRequest{ClientID: "CLIENT-B"}, []aadv1.AzureIdentity{a, b}, "b"},
		{"named by resource ID", tokenRequest{ResourceID: resG}, []aadv1.AzureIdentity{a, b}, "a"},
		{"several, none named", tokenRequest{}, []aadv1.AzureIdentity{a, b}, "several_identities"},
		{"not admitted", tokenRequest{ClientID: "client-c"}, []aadv1.AzureIdentity{a}, "identity_not_admitted"},
		{"none admitted", tokenRequest{}, nil, "no_identity"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &tokenCall{req: tt.req, ent: entitlement{candidates: tt.admitted}}
			err := namedIdentity{}.check(context.Background(), c)
			got := reasonOf(t, err)
			if err == nil {
				got = c.id.Name
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRuleException(t *testing.T) {
	f := newFixture(t, &aadv1.AzurePodIdentityException{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "exc"},
		Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "agent"}},
	})
	agent, plain := pod("agent", "10.0.0.5", func(p *corev1.Pod) { p.Labels = map[string]string{"app": "agent"} }), pod("plain", "10.0.0.3")
	q := url.Values{"api-version": {"2018-02-01"}, "resource": {"https://vault.azure.net"}}
	for _, tt := range []struct {
		name       string
		pod        *corev1.Pod
		tokens     config.ExceptionTokens
		wantExempt bool
		want       string
	}{
		{"not an exception pod: the rules below decide", plain, config.ExceptionTokensAny, false, ""},
		{"any: IMDS unchanged", agent, config.ExceptionTokensAny, true, ""},
		{"node: the node's identity", agent, config.ExceptionTokensNode, true, ""},
		{"none: no tokens", agent, config.ExceptionTokensNone, false, "exception_scope"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &tokenCall{pod: tt.pod, header: http.Header{"Metadata": {"true"}}, query: q}
			r := exceptionPods{ExceptionPolicy{Namespaces: []string{"ns"}, Tokens: tt.tokens}, f.client}
			if got := reasonOf(t, r.check(context.Background(), c)); got != tt.want || c.exempt != tt.wantExempt {
				t.Errorf("reason %q, exempt %v; want %q, %v", got, c.exempt, tt.want, tt.wantExempt)
			}
		})
	}
}

func TestRuleRecorded(t *testing.T) {
	recordedID, unrecorded, sp := azureIdentity("a", "client-a", resG), azureIdentity("b", "client-b", strings.Replace(resG, "/a", "/b", 1)), azureIdentity("sp", "client-sp", "")
	sp.Spec.Type = aadv1.ServicePrincipal
	f := newFixture(t, poolRecord(testPool, assignedEntry(&recordedID)))
	r := recorded{f.server.assignments}
	for _, tt := range []struct {
		name string
		id   aadv1.AzureIdentity
		want string
	}{
		{"Assigned in the pool's record", recordedID, ""},
		{"not in the record", unrecorded, "identity_not_assigned"},
		{"a service principal: no record needed", sp, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := reasonOf(t, r.check(context.Background(), &tokenCall{id: &tt.id})); got != tt.want {
				t.Errorf("reason %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRulePairedOnToken(t *testing.T) {
	uami, sp := azureIdentity("a", "client-a", resG), azureIdentity("sp", "client-sp", "")
	sp.Spec.Type = aadv1.ServicePrincipal
	r := pairedOnToken{&managedIdentities{}}
	for _, tt := range []struct {
		name       string
		id         aadv1.AzureIdentity
		wantVerify bool
	}{
		{"a user-assigned identity's token is checked", uami, true},
		{"a service principal's is not IMDS's", sp, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &tokenCall{id: &tt.id}
			if err := r.check(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			if (c.verify != nil) != tt.wantVerify || (c.explain != nil) != tt.wantVerify {
				t.Errorf("verify set %v, explain set %v; want %v", c.verify != nil, c.explain != nil, tt.wantVerify)
			}
		})
	}
}
