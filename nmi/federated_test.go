package nmi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

const (
	testTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	testIssuer = "https://issuer.example"
)

// federatedAAD answers the federated exchange: with a token when the
// assertion's subject is in allowed, else with Entra's AADSTS70021. It
// records each exchange.
type federatedAAD struct {
	mu        sync.Mutex
	allowed   map[string]bool // subjects
	exchanges []exchange
}

type exchange struct{ tenant, clientID, assertion, scope string }

func (a *federatedAAD) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	tenant, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	ex := exchange{tenant: tenant, clientID: r.PostForm.Get("client_id"), assertion: r.PostForm.Get("client_assertion"), scope: r.PostForm.Get("scope")}
	a.mu.Lock()
	a.exchanges = append(a.exchanges, ex)
	ok := a.allowed[unverifiedClaims(ex.assertion).Subject]
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if !ok || r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": "invalid_request", "error_codes": []int{70021},
			"error_description": "AADSTS70021: No matching federated identity record found for presented assertion."})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"token_type": "Bearer", "expires_in": 3600, "access_token": "aad-token-for-" + ex.assertion})
}

func (a *federatedAAD) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.exchanges)
}

// startFederatedAAD serves a over HTTPS, with Azure AD's discovery
// documents from fakeazure, and returns its URL and a transport trusting it.
func startFederatedAAD(t *testing.T, a *federatedAAD) (string, *http.Client) {
	t.Helper()
	srv := startAAD(t)
	srv.mu.Lock()
	srv.tokens = a
	srv.mu.Unlock()
	return srv.URL + "/", srv.client
}

// tokenRequests is a fake TokenRequest endpoint: each token names its
// service account as the subject and counts.
type tokenRequests struct {
	mu   sync.Mutex
	reqs []*authenticationv1.TokenRequest
	sas  []string
}

func (tr *tokenRequests) create(_ context.Context, ns, sa string, req *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := len(tr.reqs)
	tr.reqs, tr.sas = append(tr.reqs, req.DeepCopy()), append(tr.sas, ns+"/"+sa)
	payload, _ := json.Marshal(map[string]any{"iss": testIssuer, "sub": "system:serviceaccount:" + ns + ":" + sa, "n": n})
	out := req.DeepCopy()
	out.Status = authenticationv1.TokenRequestStatus{
		Token:               "e30." + base64.RawURLEncoding.EncodeToString(payload) + ".sig",
		ExpirationTimestamp: metav1.NewTime(time.Now().Add(time.Duration(*req.Spec.ExpirationSeconds) * time.Second)),
	}
	return out, nil
}

func (tr *tokenRequests) count() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.reqs)
}

func TestFederatedTokens(t *testing.T) {
	fedID := azureIdentity("fed", "client-f", "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/fed")
	fedID.Annotations = map[string]string{aadv1.AnnotationFederated: "true"}
	withSA := func(sa string) func(*corev1.Pod) { return func(p *corev1.Pod) { p.Spec.ServiceAccountName = sa } }
	podA := pod("a", "10.0.0.1", admitted("ns/fed"), withSA("app"))
	podB := pod("b", "10.0.0.2", admitted("ns/fed"), withSA("app"))
	podOther := pod("c", "10.0.0.3", admitted("ns/fed"), withSA("other"))
	// An empty record: no entry vouches for the federated identity.
	f := newFixture(t, &fedID, podA, podB, podOther, poolRecord(testPool), bindings("ns/fed")[0])
	aad := &federatedAAD{allowed: map[string]bool{"system:serviceaccount:ns:app": true}}
	authority, transport := startFederatedAAD(t, aad)
	trs := &tokenRequests{}
	f.server.federation = newFederation(trs.create, "node-0", testTenant, authority, transport, f.server.tokens)
	const target = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"

	rec := f.do(t, "10.0.0.1", target, true)
	if rec.Code != http.StatusOK {
		t.Fatalf("pod a: %d %s", rec.Code, rec.Body)
	}
	var tok Token
	if err := json.Unmarshal(rec.Body.Bytes(), &tok); err != nil || !strings.HasPrefix(tok.AccessToken, "aad-token-for-") || tok.ClientID != "client-f" {
		t.Fatalf("pod a's token %+v (%v)", tok, err)
	}
	req := trs.reqs[0]
	if trs.sas[0] != "ns/app" || len(req.Spec.Audiences) != 1 || req.Spec.Audiences[0] != identity.FederatedAudience ||
		*req.Spec.ExpirationSeconds != 600 || req.Spec.BoundObjectRef == nil || req.Spec.BoundObjectRef.Kind != "Pod" ||
		req.Spec.BoundObjectRef.Name != "a" || req.Spec.BoundObjectRef.UID != podA.UID {
		t.Fatalf("TokenRequest for %s: %+v", trs.sas[0], req.Spec)
	}
	ex := aad.exchanges[0]
	if ex.tenant != testTenant || ex.clientID != "client-f" || !slices.Contains(strings.Fields(ex.scope), "https://vault.azure.net/.default") || !strings.HasSuffix(tok.AccessToken, ex.assertion) {
		t.Fatalf("exchange %+v", ex)
	}
	if f.imds.calls.Load() != 0 {
		t.Errorf("IMDS was called %d times for a federated identity", f.imds.calls.Load())
	}

	t.Run("cached per pod", func(t *testing.T) {
		if rec := f.do(t, "10.0.0.1", target, true); rec.Code != http.StatusOK || trs.count() != 1 || aad.count() != 1 {
			t.Fatalf("%d; %d TokenRequests and %d exchanges, want 1 and 1", rec.Code, trs.count(), aad.count())
		}
	})
	t.Run("another pod of the same service account gets its own tokens", func(t *testing.T) {
		rec := f.do(t, "10.0.0.2", target, true)
		if rec.Code != http.StatusOK || trs.count() != 2 || aad.count() != 2 || trs.reqs[1].Spec.BoundObjectRef.Name != "b" {
			t.Fatalf("%d %s; %d TokenRequests, %d exchanges", rec.Code, rec.Body, trs.count(), aad.count())
		}
	})
	t.Run("a deleted pod's tokens are dropped", func(t *testing.T) {
		f.server.federation.forget(podA.UID)
		rec := f.do(t, "10.0.0.1", target, true)
		if rec.Code != http.StatusOK || trs.count() != 3 || aad.count() != 3 {
			t.Fatalf("%d; %d TokenRequests and %d exchanges after forget, want 3 and 3", rec.Code, trs.count(), aad.count())
		}
	})
	t.Run("a service account without a federated credential", func(t *testing.T) {
		rec := f.do(t, "10.0.0.3", target, true)
		body := rec.Body.String()
		if rec.Code != http.StatusForbidden || !strings.Contains(body, "AADSTS70021") || !strings.Contains(body, "system:serviceaccount:ns:other") ||
			!strings.Contains(body, testIssuer) || !strings.Contains(body, "az identity federated-credential create") {
			t.Fatalf("%d %s", rec.Code, body)
		}
	})
	t.Run("federation off", func(t *testing.T) {
		saved := f.server.federation
		f.server.federation = nil
		defer func() { f.server.federation = saved }()
		if rec := f.do(t, "10.0.0.2", target, true); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "policy.federation.enabled") {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
	})
	t.Run("mode federated serves an identity without the annotation", func(t *testing.T) {
		plain := azureIdentity("plain", "client-p", "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/plain")
		podP := pod("p", "10.0.0.4", admitted("ns/plain"), withSA("app"))
		g := newFixture(t, &plain, podP, bindings("ns/plain")[0])
		g.server.mode = config.ModeFederated
		g.server.resolver.AllFederated = true
		g.server.federation = newFederation(trs.create, "node-0", testTenant, authority, transport, g.server.tokens)
		before := aad.count()
		if rec := g.do(t, "10.0.0.4", target, true); rec.Code != http.StatusOK || aad.count() != before+1 || g.imds.calls.Load() != 0 {
			t.Fatalf("%d %s; exchanges %d → %d, IMDS calls %d", rec.Code, rec.Body, before, aad.count(), g.imds.calls.Load())
		}
	})
}

func TestFederationBoundsAPodsTokens(t *testing.T) {
	tokens := newTokenCache(time.Minute, 0)
	f := newFederation(nil, "node-0", testTenant, "https://login.example/", nil, tokens)
	p, other := pod("x", "10.0.0.9"), pod("y", "10.0.0.10")
	id := azureIdentity("fed", "client-f", "")
	tok := Token{ExpiresOn: strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)}
	neighbour := f.key(other, &id, "https://neighbour")
	tokens.store(neighbour, tok)
	for i := range maxPodTokens + 10 {
		tokens.store(f.key(p, &id, fmt.Sprintf("https://r%d", i)), tok)
	}
	if n := len(f.pods[p.UID].keys); n != maxPodTokens {
		t.Errorf("pod x has %d tokens tracked, want %d", n, maxPodTokens)
	}
	if got := tokens.tokens.Len(); got != maxPodTokens+1 {
		t.Errorf("cache holds %d tokens, want pod x's %d and its neighbour's", got, maxPodTokens)
	}
	if _, ok := tokens.lookup(neighbour); !ok {
		t.Error("the neighbour's token went for pod x's")
	}
	f.forget(p.UID)
	if got := tokens.tokens.Len(); got != 1 {
		t.Errorf("after pod x was deleted the cache holds %d tokens, want its neighbour's", got)
	}
}

func TestFederationRefusesAnotherNodesPod(t *testing.T) {
	f := newFederation(nil, "node-0", testTenant, "https://login.example/", nil, newTokenCache(time.Minute, 0))
	p := pod("x", "10.0.0.9", func(p *corev1.Pod) { p.Spec.NodeName = "node-1" })
	id := azureIdentity("fed", "client-f", "")
	_, err := f.token(context.Background(), p, &id, "https://vault.azure.net")
	if err == nil || !strings.Contains(err.Error(), "pod_on_another_node") {
		t.Fatalf("err = %v", err)
	}
}

func TestUnverifiedClaims(t *testing.T) {
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"https://i","sub":"system:serviceaccount:a:b"}`))
	for _, tt := range []struct{ token, iss, sub string }{
		{"h." + payload + ".s", "https://i", "system:serviceaccount:a:b"},
		{"not a token", "", ""},
		{"h.!!!.s", "", ""},
	} {
		t.Run(fmt.Sprintf("%.10s", tt.token), func(t *testing.T) {
			if c := unverifiedClaims(tt.token); c.Issuer != tt.iss || c.Subject != tt.sub {
				t.Fatalf("claims %+v", c)
			}
		})
	}
}
