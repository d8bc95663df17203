package nmi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// aadServer is a fake Azure AD over HTTPS that records the path of every
// request it gets.
type aadServer struct {
	*fakeazure.AAD
	URL    string
	client *http.Client // trusts the server's CA
	mu     sync.Mutex
	paths  []string
	// tokens, when set, answers the token endpoint instead of the fake.
	tokens http.Handler
}

func startAAD(t *testing.T) *aadServer {
	t.Helper()
	signer, err := fakeazure.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := testca.New("fake-azure-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := ca.ServerTLSConfig("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	a := &aadServer{AAD: fakeazure.NewAAD(signer), client: ca.Client()}
	handler := a.Handler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.paths = append(a.paths, r.URL.Path)
		tokens := a.tokens
		a.mu.Unlock()
		if tokens != nil && strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token") {
			tokens.ServeHTTP(w, r)
			return
		}
		handler.ServeHTTP(w, r)
	}))
	srv.TLS = tlsCfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	a.URL = srv.URL
	return a
}

// requests returns the paths requested so far.
func (a *aadServer) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.paths)
}

// servicePrincipals is NMI's client of a, reading Secrets with r.
func (a *aadServer) servicePrincipals(r *recentSecrets) *servicePrincipals {
	return &servicePrincipals{secrets: r, defaultAuthorityHost: a.URL + "/", transport: a.client}
}

func TestServicePrincipalTokens(t *testing.T) {
	aad := startAAD(t)
	certPEM, cert, err := fakeazure.NewClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	app := aad.CreateServicePrincipal("tenant-1", cert)

	spIdentity := func(name, secretNS, secretName string) *aadv1.AzureIdentity {
		return &aadv1.AzureIdentity{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: app.AppID, TenantID: "tenant-1",
				ClientPassword: &corev1.SecretReference{Namespace: secretNS, Name: secretName}},
		}
	}
	secret := func(ns, name string, data map[string][]byte) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}
	}
	// A server that is not an Azure AD authority: NMI must never send it a Secret.
	var stolen atomic.Int32
	thief := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { stolen.Add(1) }))
	t.Cleanup(thief.Close)
	toThief := spIdentity("thief", "", "creds")
	toThief.Spec.ADEndpoint = thief.URL + "/"
	plainHTTP := spIdentity("plainhttp", "", "creds")
	plainHTTP.Spec.ADEndpoint = strings.Replace(aad.URL, "https://", "http://", 1)
	ownAuthority := spIdentity("own", "", "creds")
	ownAuthority.Spec.ADEndpoint = aad.URL
	certIdentity := spIdentity("cert", "", "cert")
	certIdentity.Spec.Type = aadv1.ServicePrincipalCertificate
	badCert := spIdentity("badcert", "", "badcert")
	badCert.Spec.Type = aadv1.ServicePrincipalCertificate
	objs := []client.Object{
		badCert,
		spIdentity("sp", "", "creds"),
		spIdentity("onekey", "ns", "onekey"),
		spIdentity("wrong", "ns", "wrong"),
		spIdentity("elsewhere", "other", "creds"),
		spIdentity("missing", "ns", "nope"),
		certIdentity,
		secret("ns", "cert", map[string][]byte{"certificate": certPEM, "password": nil}),
		secret("ns", "badcert", map[string][]byte{"certificate": []byte("not a certificate")}),
		pod("p6", "10.0.0.6", admitted("ns/cert")),
		pod("p7", "10.0.0.7", admitted("ns/badcert")),
		secret("ns", "creds", map[string][]byte{"clientSecret": []byte(app.Secret), "note": []byte("x")}),
		secret("ns", "onekey", map[string][]byte{"password": []byte(app.Secret)}),
		secret("ns", "wrong", map[string][]byte{"clientSecret": []byte("not-it")}),
		secret("other", "creds", map[string][]byte{"clientSecret": []byte(app.Secret)}),
		pod("p1", "10.0.0.1", admitted("ns/sp")),
		pod("p2", "10.0.0.2", admitted("ns/onekey")),
		pod("p3", "10.0.0.3", admitted("ns/wrong")),
		pod("p4", "10.0.0.4", admitted("ns/elsewhere")),
		pod("p5", "10.0.0.5", admitted("ns/missing")),
		toThief, plainHTTP, ownAuthority,
		pod("p8", "10.0.0.8", admitted("ns/thief")),
		pod("p9", "10.0.0.9", admitted("ns/plainhttp")),
		pod("p10", "10.0.0.10", admitted("ns/own")),
	}
	objs = append(objs, bindings("ns/sp", "ns/onekey", "ns/wrong", "ns/elsewhere", "ns/missing", "ns/cert", "ns/badcert", "ns/thief", "ns/plainhttp", "ns/own")...)
	f := newFixture(t, objs...)
	f.server.sp = aad.servicePrincipals(newRecentSecrets(f.server.reader, 0))

	const tok = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
	tests := []struct {
		name   string
		ip     string
		status int
		want   string
	}{
		{"secret key clientSecret", "10.0.0.1", 200, `"client_id":"` + app.AppID},
		{"secret with one key", "10.0.0.2", 200, `"token_type":"Bearer"`},
		{"wrong secret", "10.0.0.3", 502, "Azure AD refused"},
		{"adEndpoint of another server", "10.0.0.8", 403, "not an Azure AD authority NMI sends secrets to"},
		{"adEndpoint over plain HTTP", "10.0.0.9", 403, "not an Azure AD authority NMI sends secrets to"},
		{"adEndpoint naming NMI's own authority", "10.0.0.10", 200, `"token_type":"Bearer"`},
		{"secret in another namespace", "10.0.0.4", 403, "nmi.allowCrossNamespaceSecrets"},
		{"missing secret", "10.0.0.5", 500, "does not exist"},
		{"certificate", "10.0.0.6", 200, `"client_id":"` + app.AppID},
		{"unusable certificate", "10.0.0.7", 500, "no usable certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := f.do(t, tt.ip, tok, true)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.want) {
				t.Fatalf("got %d %s; want %d containing %q", rec.Code, rec.Body, tt.status, tt.want)
			}
		})
	}

	if n := stolen.Load(); n != 0 {
		t.Errorf("the server named by adEndpoint got %d requests", n)
	}
	// Azure AD's own answer (its AADSTS code and description) stays in NMI's log.
	if rec := f.do(t, "10.0.0.3", tok, true); strings.Contains(rec.Body.String(), "AADSTS") {
		t.Errorf("refusal passes Azure AD's body on to the pod: %s", rec.Body)
	}

	rec := f.do(t, "10.0.0.1", tok, true)
	var body Token
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	claims, err := aad.Signer.Parse(body.AccessToken)
	if err != nil || claims.AppID != app.AppID || claims.TID != "tenant-1" || claims.Audience[0] != "https://vault.azure.net" {
		t.Fatalf("claims %+v, %v", claims, err)
	}

	f.server.sp.allowCrossNamespace = true
	if rec := f.do(t, "10.0.0.4", tok, true); rec.Code != 200 {
		t.Fatalf("cross-namespace Secret allowed by flag: got %d %s", rec.Code, rec.Body)
	}
}

// A cached service principal token is served only while what it was issued
// for holds: the tenant, the authority, the auxiliary tenants and the
// Secret (a rotation gives it a new resourceVersion). After each change the
// next request asks Azure AD again.
func TestServicePrincipalTokenFollowsEdits(t *testing.T) {
	aad := startAAD(t)
	app := aad.CreateServicePrincipal("tenant-1")
	editIdentity := func(edit func(*aadv1.AzureIdentitySpec)) func(context.Context, client.Client) error {
		return func(ctx context.Context, c client.Client) error {
			var id aadv1.AzureIdentity
			if err := c.Get(ctx, client.ObjectKey{Namespace: "ns", Name: "sp"}, &id); err != nil {
				return err
			}
			edit(&id.Spec)
			return c.Update(ctx, &id)
		}
	}
	tests := []struct {
		name   string
		change func(context.Context, client.Client) error
		asked  string // the Azure AD path asked next; "": none, the cached token is served
	}{
		{"nothing changed", func(context.Context, client.Client) error { return nil }, ""},
		{"tenant", editIdentity(func(s *aadv1.AzureIdentitySpec) { s.TenantID = "tenant-2" }), "/tenant-2/oauth2/v2.0/token"},
		{"adEndpoint", editIdentity(func(s *aadv1.AzureIdentitySpec) { s.ADEndpoint = aad.URL }), "/tenant-1/oauth2/v2.0/token"},
		{"auxiliary tenants", editIdentity(func(s *aadv1.AzureIdentitySpec) { s.AuxiliaryTenantIDs = []string{"tenant-3"} }), "/tenant-1/oauth2/v2.0/token"},
		{"Secret rotated", func(ctx context.Context, c client.Client) error {
			var secret corev1.Secret
			if err := c.Get(ctx, client.ObjectKey{Namespace: "ns", Name: "creds"}, &secret); err != nil {
				return err
			}
			secret.Data["clientSecret"] = []byte("rotated")
			return c.Update(ctx, &secret)
		}, "/tenant-1/oauth2/v2.0/token"},
	}
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=https%3A%2F%2Fvault.azure.net"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := &aadv1.AzureIdentity{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sp"},
				Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: app.AppID, TenantID: "tenant-1",
					ClientPassword: &corev1.SecretReference{Name: "creds"}},
			}
			creds := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "creds"}, Data: map[string][]byte{"clientSecret": []byte(app.Secret)}}
			f := newFixture(t, id, creds, binding("ns", "bind-sp", "sel", "sp"), pod("a", "10.0.0.1", admitted("ns/sp")))
			secrets := newRecentSecrets(f.server.reader, secretReuse)
			now := time.Now()
			secrets.now = func() time.Time { return now }
			f.server.sp = aad.servicePrincipals(secrets)
			if rec := f.do(t, "10.0.0.1", tok, true); rec.Code != http.StatusOK {
				t.Fatalf("first token: got %d %s", rec.Code, rec.Body)
			}
			before := len(aad.requests())
			if err := tt.change(t.Context(), f.client); err != nil {
				t.Fatal(err)
			}
			now = now.Add(secretReuse) // a Secret read is reused this long
			f.do(t, "10.0.0.1", tok, true)
			asked := aad.requests()[before:]
			switch {
			case tt.asked == "" && len(asked) != 0:
				t.Fatalf("Azure AD asked %v; want the cached token", asked)
			case tt.asked != "" && !slices.Contains(asked, tt.asked):
				t.Fatalf("Azure AD asked %v; want %s (the cached token was served)", asked, tt.asked)
			}
		})
	}
}

// countingReader counts the Secrets it reads.
type countingReader struct {
	client.Reader
	gets atomic.Int32
}

func (r *countingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	r.gets.Add(1)
	return r.Reader.Get(ctx, key, obj, opts...)
}

// A Secret is read live, but a read serves further requests for
// secretReuse, so a pod looping on its token is not an apiserver request
// per token.
func TestSecretReadsAreReused(t *testing.T) {
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "creds"}, Data: map[string][]byte{"clientSecret": []byte("s")}}
	reader := &countingReader{Reader: newClient(t, secret)}
	r := newRecentSecrets(reader, time.Second)
	now := time.Now()
	r.now = func() time.Time { return now }
	key := client.ObjectKeyFromObject(secret)
	for range 3 {
		if _, err := r.get(t.Context(), key); err != nil {
			t.Fatal(err)
		}
	}
	if n := reader.gets.Load(); n != 1 {
		t.Fatalf("%d reads within a second, want 1", n)
	}
	now = now.Add(time.Second)
	if _, err := r.get(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	if n := reader.gets.Load(); n != 2 {
		t.Fatalf("%d reads after a second, want 2", n)
	}
	if _, err := r.get(t.Context(), client.ObjectKey{Namespace: "ns", Name: "missing"}); err == nil {
		t.Fatal("a missing Secret was found")
	}
}
