package fakeazure

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/golang-jwt/jwt/v5"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// testIssuer is an OIDC issuer whose published keys a test can change.
type testIssuer struct {
	*httptest.Server
	mu        sync.Mutex
	published map[string]*rsa.PublicKey // by key ID
	fetches   atomic.Int32              // of the key set
}

func startIssuer(t *testing.T, keys map[string]*rsa.PublicKey) *testIssuer {
	t.Helper()
	is := &testIssuer{published: keys}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"issuer": is.URL, "jwks_uri": is.URL + "/openid/v1/jwks"})
	})
	mux.HandleFunc("GET /openid/v1/jwks", func(w http.ResponseWriter, _ *http.Request) {
		is.fetches.Add(1)
		is.mu.Lock()
		defer is.mu.Unlock()
		var set []map[string]string
		for kid, k := range is.published {
			set = append(set, map[string]string{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
				"n": base64.RawURLEncoding.EncodeToString(k.N.Bytes()), "e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes())})
		}
		writeJSON(w, http.StatusOK, map[string]any{"keys": set})
	})
	is.Server = httptest.NewTLSServer(mux)
	t.Cleanup(is.Close)
	return is
}

func (is *testIssuer) publish(kid string, k *rsa.PublicKey) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.published[kid] = k
}

func newRSAKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func signAssertion(t *testing.T, key *rsa.PrivateKey, kid string, c jwt.RegisteredClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAADFederatedCredentials(t *testing.T) {
	signer, ca, aad, srv := startTestAAD(t)
	key1, key2, stranger := newRSAKey(t), newRSAKey(t), newRSAKey(t)
	issuer := startIssuer(t, map[string]*rsa.PublicKey{"k1": &key1.PublicKey})
	state := NewState()
	id := state.CreateIdentity(testSub, testRG, "workload")
	const subject = "system:serviceaccount:ns:sa"
	if _, err := state.CreateFederatedCredential(id.ResourceID, "fic", issuer.URL, subject); err != nil {
		t.Fatal(err)
	}
	aad.Federate(state, issuer.Client())

	now := time.Now()
	valid := jwt.RegisteredClaims{Issuer: issuer.URL, Subject: subject, Audience: jwt.ClaimStrings{FederatedAudience},
		NotBefore: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(10 * time.Minute))}
	with := func(change func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
		c := valid
		change(&c)
		return c
	}
	tests := []struct {
		name     string
		tenant   string
		key      *rsa.PrivateKey
		kid      string
		claims   jwt.RegisteredClaims
		rotate   bool  // publish key2 as k2 first
		fetches  int32 // key-set fetches this case causes
		status   int
		code     string
		contains string
	}{
		{name: "a matching assertion gets the identity's token", key: key1, kid: "k1", claims: valid, fetches: 1, status: http.StatusOK},
		{name: "the issuer's keys are cached", key: key1, kid: "k1", claims: valid, status: http.StatusOK},
		{name: "a rotated key is fetched on its first use", key: key2, kid: "k2", claims: valid, rotate: true, fetches: 1, status: http.StatusOK},
		{name: "no credential for the issuer", key: key1, kid: "k1", claims: with(func(c *jwt.RegisteredClaims) { c.Issuer = "https://other.example" }),
			status: http.StatusUnauthorized, code: "invalid_client", contains: "AADSTS700211: No matching federated identity record found for presented assertion issuer 'https://other.example'"},
		{name: "another subject", key: key1, kid: "k1", claims: with(func(c *jwt.RegisteredClaims) { c.Subject = "system:serviceaccount:ns:other" }),
			status: http.StatusBadRequest, code: "invalid_request",
			contains: "AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '" + issuer.URL + "'. Assertion Subject: 'system:serviceaccount:ns:other'."},
		{name: "the subject matches case-sensitively", key: key1, kid: "k1", claims: with(func(c *jwt.RegisteredClaims) { c.Subject = strings.ToUpper(subject) }),
			status: http.StatusBadRequest, code: "invalid_request", contains: "AADSTS70021"},
		{name: "another audience", key: key1, kid: "k1", claims: with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"https://kubernetes.default.svc"} }),
			status: http.StatusBadRequest, code: "invalid_request", contains: "Assertion Audience: 'https://kubernetes.default.svc'"},
		{name: "expired", key: key1, kid: "k1", claims: with(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(-time.Minute)) }),
			status: http.StatusUnauthorized, code: "invalid_client", contains: "AADSTS700024: Client assertion is not within its valid time range"},
		{name: "not yet valid", key: key1, kid: "k1", claims: with(func(c *jwt.RegisteredClaims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Minute)) }),
			status: http.StatusUnauthorized, code: "invalid_client", contains: "AADSTS700024"},
		{name: "without exp", key: key1, kid: "k1", claims: with(func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil }),
			status: http.StatusUnauthorized, code: "invalid_client", contains: "AADSTS700024"},
		{name: "a key the issuer does not publish", key: stranger, kid: "k3", claims: valid, fetches: 1,
			status: http.StatusUnauthorized, code: "invalid_client", contains: "AADSTS50013: Assertion failed signature validation. [Reason - The key was not found.]"},
		{name: "a published key ID on another key's signature", key: stranger, kid: "k1", claims: valid,
			status: http.StatusUnauthorized, code: "invalid_client", contains: "AADSTS50013: Assertion failed signature validation. [Reason - Key was found"},
		{name: "another tenant", tenant: "other-tenant", key: key1, kid: "k1", claims: valid,
			status: http.StatusBadRequest, code: "unauthorized_client", contains: "AADSTS700016: Application with identifier '" + id.ClientID + "'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rotate {
				issuer.publish("k2", &key2.PublicKey)
			}
			tenant := id.TenantID
			if tt.tenant != "" {
				tenant = tt.tenant
			}
			before := issuer.fetches.Load()
			status, body := exchange(t, ca, srv.URL, tenant, url.Values{"client_id": {id.ClientID}, "client_assertion_type": {JWTBearer},
				"client_assertion": {signAssertion(t, tt.key, tt.kid, tt.claims)}})
			if status != tt.status || body["error"] != tt.code || !strings.Contains(body["error_description"], tt.contains) {
				t.Fatalf("got %d %v, want %d %s %q", status, body, tt.status, tt.code, tt.contains)
			}
			if got := issuer.fetches.Load() - before; got != tt.fetches {
				t.Errorf("the key set was fetched %d times, want %d", got, tt.fetches)
			}
			if status == http.StatusOK {
				checkIdentityToken(t, signer, body["access_token"], id)
			}
		})
	}

	t.Run("azidentity's ClientAssertionCredential", func(t *testing.T) {
		cred, err := azidentity.NewClientAssertionCredential(id.TenantID, id.ClientID, func(context.Context) (string, error) {
			return signAssertion(t, key1, "k1", valid), nil
		}, &azidentity.ClientAssertionCredentialOptions{DisableInstanceDiscovery: true, ClientOptions: azcore.ClientOptions{
			Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: srv.URL + "/"}, Transport: ca.Client()}})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := cred.GetToken(t.Context(), policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}})
		if err != nil {
			t.Fatal(err)
		}
		checkIdentityToken(t, signer, tok.Token, id)
	})
}

// exchange posts a client_credentials request for https://vault.azure.net
// and returns the status and the JSON body.
func exchange(t *testing.T, ca *testca.CA, authority, tenant string, form url.Values) (int, map[string]string) {
	t.Helper()
	form.Set("grant_type", "client_credentials")
	form.Set("scope", "https://vault.azure.net/.default")
	resp, err := ca.Client().PostForm(authority+"/"+tenant+"/oauth2/v2.0/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for k, v := range body {
		if s, ok := v.(string); ok {
			out[k] = s
		}
	}
	return resp.StatusCode, out
}

// checkIdentityToken asserts a token is the identity's for the vault, with
// the claims IMDS would give it.
func checkIdentityToken(t *testing.T, signer *Signer, token string, id Identity) {
	t.Helper()
	c, err := signer.Parse(token)
	if err != nil {
		t.Fatal(err)
	}
	if c.AppID != id.ClientID || c.OID != id.PrincipalID || c.TID != id.TenantID || c.XMSMirID != id.ResourceID ||
		len(c.Audience) != 1 || c.Audience[0] != "https://vault.azure.net" {
		t.Fatalf("claims %+v, want the identity %+v for https://vault.azure.net", c, id)
	}
}

func TestFederatedCredentialLifecycle(t *testing.T) {
	state := NewState()
	id := state.CreateIdentity(testSub, testRG, "workload")
	fc, err := state.CreateFederatedCredential(id.ResourceID, "fic", "https://issuer", "sub")
	if err != nil {
		t.Fatal(err)
	}
	if fc.ID != id.ResourceID+"/federatedIdentityCredentials/fic" || len(fc.Audiences) != 1 || fc.Audiences[0] != FederatedAudience {
		t.Fatalf("created %+v", fc)
	}
	for i := 1; i < MaxFederatedCredentials; i++ {
		if _, err := state.CreateFederatedCredential(id.ResourceID, "more"+strings.Repeat("x", i), "https://issuer", "sub", "aud"); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"a name is unique per identity, in any case", func() error {
			_, err := state.CreateFederatedCredential(id.ResourceID, "FIC", "https://issuer", "other")
			return err
		}, ErrFederatedCredentialExists},
		{"at most 20 per identity", func() error {
			_, err := state.CreateFederatedCredential(id.ResourceID, "one-too-many", "https://issuer", "sub")
			return err
		}, ErrTooManyFederatedCredentials},
		{"only on an existing identity", func() error {
			_, err := state.CreateFederatedCredential(id.ResourceID+"-gone", "fic", "https://issuer", "sub")
			return err
		}, ErrIdentityNotFound},
		{"delete by name", func() error { return state.DeleteFederatedCredential(id.ResourceID, "Fic") }, nil},
		{"a deleted one is gone", func() error { return state.DeleteFederatedCredential(id.ResourceID, "fic") }, ErrFederatedCredentialNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if got := len(state.FederatedCredentials(id.ResourceID)); got != MaxFederatedCredentials-1 {
		t.Fatalf("%d credentials left, want %d", got, MaxFederatedCredentials-1)
	}
	state.DeleteIdentity(id.ResourceID)
	if got := state.FederatedCredentials(id.ResourceID); len(got) != 0 {
		t.Fatalf("the deleted identity's credentials remain: %v", got)
	}
}
