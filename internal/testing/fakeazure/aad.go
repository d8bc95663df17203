package fakeazure

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// ServicePrincipal is an app registration with its credentials.
type ServicePrincipal struct {
	AppID    string // the client ID
	ObjectID string
	TenantID string
	Secret   string
	// Certificates may sign client assertions instead of the secret.
	Certificates []*x509.Certificate
}

// AAD is the Azure AD token endpoint for client credentials (secret or
// certificate assertion). Serve it over HTTPS (CA.ServerTLSConfig): azidentity
// refuses a plain-HTTP authority.
type AAD struct {
	Signer     *Signer
	mu         sync.Mutex
	apps       map[string]*ServicePrincipal // by app ID
	federation *federation                  // nil until Federate
}

// NewAAD returns an AAD with no apps.
func NewAAD(signer *Signer) *AAD {
	return &AAD{Signer: signer, apps: map[string]*ServicePrincipal{}}
}

// StartAAD serves a new AAD over HTTPS from ca on a loopback port until the
// server is closed; the server's URL is the authority host.
func StartAAD(signer *Signer, ca *testca.CA) (*AAD, *httptest.Server, error) {
	tlsCfg, err := ca.ServerTLSConfig("127.0.0.1")
	if err != nil {
		return nil, nil, err
	}
	aad := NewAAD(signer)
	srv := httptest.NewUnstartedServer(aad.Handler())
	srv.TLS = tlsCfg
	srv.StartTLS()
	return aad, srv, nil
}

// CreateServicePrincipal registers an app in tenantID with a fresh secret.
func (a *AAD) CreateServicePrincipal(tenantID string, certs ...*x509.Certificate) ServicePrincipal {
	sp := &ServicePrincipal{AppID: uuid.NewString(), ObjectID: uuid.NewString(), TenantID: tenantID, Secret: uuid.NewString(), Certificates: certs}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.apps[sp.AppID] = sp
	return *sp
}

// NewClientCertificate makes a self-signed certificate for a service
// principal; pemData holds the certificate and its PKCS#8 key, as a
// Kubernetes Secret's `certificate` key would.
func NewClientCertificate() (pemData []byte, cert *x509.Certificate, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "service principal"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-signing: %w", err)
	}
	if cert, err = x509.ParseCertificate(der); err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	pemData = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
	return pemData, cert, nil
}

// Handler serves OpenID discovery and the v2.0 token endpoint per tenant.
func (a *AAD) Handler() http.Handler {
	r := mux.NewRouter()
	r.Path("/{tenant}/v2.0/.well-known/openid-configuration").HandlerFunc(a.discovery)
	r.Path("/{tenant}/oauth2/v2.0/token").Methods(http.MethodPost).HandlerFunc(a.token)
	return r
}

func (a *AAD) discovery(w http.ResponseWriter, r *http.Request) {
	base := "https://" + r.Host + "/" + mux.Vars(r)["tenant"]
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                 base + "/v2.0",
		"authorization_endpoint": base + "/oauth2/v2.0/authorize",
		"token_endpoint":         base + "/oauth2/v2.0/token",
	})
}

// tokenError is a refusal of the token endpoint as Azure AD words it: the
// HTTP status, the OAuth 2.0 error code and an AADSTS description.
type tokenError struct {
	status      int
	code        string
	description string
}

func (e *tokenError) Error() string { return e.description }

func (a *AAD) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "client_credentials" {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "AADSTS70003: only client_credentials is supported")
		return
	}
	claims, err := a.authenticate(r, mux.Vars(r)["tenant"])
	if err != nil {
		te := &tokenError{http.StatusInternalServerError, "server_error", err.Error()}
		errors.As(err, &te)
		oauthError(w, te.status, te.code, te.description)
		return
	}
	// MSAL adds OpenID scopes; the resource is the one ending in /.default.
	var audience string
	for _, s := range strings.Fields(r.PostForm.Get("scope")) {
		if strings.HasSuffix(s, "/.default") {
			audience = strings.TrimSuffix(s, "/.default")
		}
	}
	if audience == "" {
		oauthError(w, http.StatusBadRequest, "invalid_scope", "AADSTS1002012: client credentials need a scope ending in /.default")
		return
	}
	tok, _, err := a.Signer.Sign(*claims, audience)
	if err != nil {
		oauthError(w, http.StatusInternalServerError, "server_error", err.Error())
		return
	}
	secs := int(TokenLifetime.Seconds())
	writeJSON(w, http.StatusOK, map[string]any{"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": tok})
}

// authenticate finds the client in the tenant and checks its credential: a
// service principal's secret or certificate, or the assertion of a managed
// identity's federated credential. The claims are those of the client's
// token; a managed identity's match what IMDS issues for it.
func (a *AAD) authenticate(r *http.Request, tenant string) (*Claims, error) {
	clientID := r.PostForm.Get("client_id")
	a.mu.Lock()
	sp, isApp := a.apps[clientID]
	fed := a.federation
	a.mu.Unlock()
	if isApp && strings.EqualFold(sp.TenantID, tenant) {
		if err := checkAppCredential(sp, r); err != nil {
			return nil, &tokenError{http.StatusUnauthorized, "invalid_client", "AADSTS7000215: " + err.Error()}
		}
		return &Claims{AppID: sp.AppID, OID: sp.ObjectID, TID: sp.TenantID}, nil
	}
	if fed != nil {
		if id, ok := fed.state.IdentityByClientID(clientID); ok && strings.EqualFold(id.TenantID, tenant) {
			if err := fed.verify(r.Context(), id, r.PostForm); err != nil {
				return nil, err
			}
			return &Claims{AppID: id.ClientID, OID: id.PrincipalID, TID: id.TenantID, XMSMirID: id.ResourceID}, nil
		}
	}
	return nil, &tokenError{http.StatusBadRequest, "unauthorized_client",
		fmt.Sprintf("AADSTS700016: Application with identifier '%s' was not found in the directory '%s'", clientID, tenant)}
}

// checkAppCredential checks a service principal's client secret or
// certificate-signed assertion.
func checkAppCredential(sp *ServicePrincipal, r *http.Request) error {
	if secret := r.PostForm.Get("client_secret"); secret != "" {
		if secret != sp.Secret {
			return fmt.Errorf("invalid client secret for app %s", sp.AppID)
		}
		return nil
	}
	assertion := r.PostForm.Get("client_assertion")
	if assertion == "" {
		return fmt.Errorf("no client_secret or client_assertion for app %s", sp.AppID)
	}
	for _, cert := range sp.Certificates {
		var claims jwt.RegisteredClaims
		_, err := jwt.ParseWithClaims(assertion, &claims, func(*jwt.Token) (any, error) { return cert.PublicKey, nil },
			jwt.WithValidMethods([]string{"RS256", "PS256"}), jwt.WithIssuer(sp.AppID), jwt.WithSubject(sp.AppID))
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("client assertion for app %s is not signed by a registered certificate", sp.AppID)
}
