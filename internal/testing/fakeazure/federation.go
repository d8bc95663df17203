package fakeazure

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// JWTBearer is the client_assertion_type of a federated (or certificate)
// client assertion.
const JWTBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// Federate lets the user-assigned identities of state sign in with client
// assertions that their federated credentials accept, as Azure AD does for
// workload identity federation. client fetches the issuers' OpenID discovery
// documents and keys (http.DefaultClient when nil): the sandbox's reaches
// the apiserver inside its namespace and trusts the cluster's CA.
func (a *AAD) Federate(state *State, client *http.Client) {
	if client == nil {
		client = http.DefaultClient
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.federation = &federation{state: state, client: client, keys: map[string]map[string]*rsa.PublicKey{}}
}

// federation checks assertions against federated credentials. It keeps each
// issuer's keys and fetches them again when an assertion names a key it does
// not know, which is how a rotated key is picked up.
type federation struct {
	state  *State
	client *http.Client
	mu     sync.Mutex
	keys   map[string]map[string]*rsa.PublicKey // by issuer, then key ID
}

var (
	errKeyNotFound = errors.New("the key was not found")
	errDiscovery   = errors.New("request to the issuer's OIDC endpoint failed")
)

// verify accepts the assertion in form if a federated credential of id
// matches its issuer, subject and audience, the issuer's key signed it and
// it is valid now. The checks run in that order, each with Azure AD's error.
func (f *federation) verify(ctx context.Context, id Identity, form url.Values) error {
	assertion := form.Get("client_assertion")
	if form.Get("client_assertion_type") != JWTBearer || assertion == "" {
		return &tokenError{http.StatusUnauthorized, "invalid_client",
			"AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}
	}
	var claims jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(assertion, &claims); err != nil {
		return &tokenError{http.StatusBadRequest, "invalid_request", "AADSTS50027: JWT token is invalid or malformed."}
	}
	creds := slices.DeleteFunc(f.state.FederatedCredentials(id.ResourceID), func(fc FederatedCredential) bool { return fc.Issuer != claims.Issuer })
	if len(creds) == 0 {
		return &tokenError{http.StatusUnauthorized, "invalid_client", fmt.Sprintf(
			"AADSTS700211: No matching federated identity record found for presented assertion issuer '%s'.", claims.Issuer)}
	}
	if err := f.checkSignature(ctx, assertion, claims.Issuer); err != nil {
		return err
	}
	if err := checkLifetime(claims, time.Now()); err != nil {
		return err
	}
	if !slices.ContainsFunc(creds, func(fc FederatedCredential) bool { return matches(fc, claims) }) {
		return &tokenError{http.StatusBadRequest, "invalid_request", fmt.Sprintf(
			"AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'.",
			claims.Issuer, claims.Subject, strings.Join(claims.Audience, ","))}
	}
	return nil
}

// matches compares subject and audiences exactly: Azure AD's matching is
// case-sensitive.
func matches(fc FederatedCredential, c jwt.RegisteredClaims) bool {
	return fc.Subject == c.Subject && slices.ContainsFunc(c.Audience, func(aud string) bool { return slices.Contains(fc.Audiences, aud) })
}

func (f *federation) checkSignature(ctx context.Context, assertion, issuer string) error {
	_, err := jwt.Parse(assertion, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		return f.key(ctx, issuer, kid)
	}, jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg()}), jwt.WithoutClaimsValidation())
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errDiscovery):
		return &tokenError{http.StatusUnauthorized, "invalid_client", "AADSTS50166: Request to External OIDC endpoint failed. " + err.Error()}
	case errors.Is(err, errKeyNotFound):
		return &tokenError{http.StatusUnauthorized, "invalid_client", "AADSTS50013: Assertion failed signature validation. [Reason - The key was not found.]"}
	default:
		return &tokenError{http.StatusUnauthorized, "invalid_client",
			"AADSTS50013: Assertion failed signature validation. [Reason - Key was found, but use of the key to verify the signature failed.]"}
	}
}

// checkLifetime refuses an assertion outside [nbf, exp]; one without exp
// never is valid.
func checkLifetime(c jwt.RegisteredClaims, now time.Time) error {
	var from, until time.Time
	if c.NotBefore != nil {
		from = c.NotBefore.Time
	}
	if c.ExpiresAt != nil {
		until = c.ExpiresAt.Time
	}
	if c.ExpiresAt != nil && now.Before(until) && !now.Before(from) {
		return nil
	}
	return &tokenError{http.StatusUnauthorized, "invalid_client", fmt.Sprintf(
		"AADSTS700024: Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s.",
		now.UTC().Format(time.RFC3339), from.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))}
}

// key returns the issuer's key with ID kid, fetching the issuer's keys when
// it is not known yet.
func (f *federation) key(ctx context.Context, issuer, kid string) (*rsa.PublicKey, error) {
	f.mu.Lock()
	k, ok := f.keys[issuer][kid]
	f.mu.Unlock()
	if ok {
		return k, nil
	}
	keys, err := f.fetchKeys(ctx, issuer)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.keys[issuer] = keys
	f.mu.Unlock()
	if k, ok := keys[kid]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("%w: key ID %q of %s", errKeyNotFound, kid, issuer)
}

// fetchKeys reads the issuer's discovery document, which must name the
// issuer itself, and the RSA keys of its jwks_uri.
func (f *federation) fetchKeys(ctx context.Context, issuer string) (map[string]*rsa.PublicKey, error) {
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := f.getJSON(ctx, strings.TrimSuffix(issuer, "/")+"/.well-known/openid-configuration", &doc); err != nil {
		return nil, err
	}
	if doc.Issuer != issuer {
		return nil, fmt.Errorf("%w: the discovery document of %s names issuer %q", errDiscovery, issuer, doc.Issuer)
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := f.getJSON(ctx, doc.JWKSURI, &set); err != nil {
		return nil, err
	}
	keys := map[string]*rsa.PublicKey{}
	for _, k := range set.Keys {
		if pub, err := k.rsa(); err == nil {
			keys[k.Kid] = pub
		}
	}
	return keys, nil
}

func (f *federation) getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("%w: %w", errDiscovery, err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", errDiscovery, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: GET %s: %s", errDiscovery, u, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%w: GET %s: %w", errDiscovery, u, err)
	}
	return nil
}

// jwk is a JSON Web Key; only RSA keys are used.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	N   string `json:"n"`
	E   string `json:"e"`
}

func (k jwk) rsa() (*rsa.PublicKey, error) {
	if k.Kty != "RSA" {
		return nil, fmt.Errorf("key %q is %s, not RSA", k.Kid, k.Kty)
	}
	n, err := base64.RawURLEncoding.DecodeString(k.N)
	if err != nil {
		return nil, fmt.Errorf("key %q: modulus: %w", k.Kid, err)
	}
	e, err := base64.RawURLEncoding.DecodeString(k.E)
	if err != nil {
		return nil, fmt.Errorf("key %q: exponent: %w", k.Kid, err)
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}, nil
}
