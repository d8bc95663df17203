package nmi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

func TestServicePrincipalTokens(t *testing.T) {
	signer, err := fakeazure.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := testca.New("fake-azure-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	aad, srv, err := fakeazure.StartAAD(signer, ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
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
	plainHTTP.Spec.ADEndpoint = strings.Replace(srv.URL, "https://", "http://", 1)
	ownAuthority := spIdentity("own", "", "creds")
	ownAuthority.Spec.ADEndpoint = srv.URL
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
	f.server.sp = &servicePrincipals{secrets: f.server.reader, defaultAuthorityHost: srv.URL + "/", transport: ca.Client()}

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
		{"secret in another namespace", "10.0.0.4", 403, "--allow-cross-namespace-secrets"},
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
	claims, err := signer.Parse(body.AccessToken)
	if err != nil || claims.AppID != app.AppID || claims.TID != "tenant-1" || claims.Audience[0] != "https://vault.azure.net" {
		t.Fatalf("claims %+v, %v", claims, err)
	}

	f.server.sp.allowCrossNamespace = true
	if rec := f.do(t, "10.0.0.4", tok, true); rec.Code != 200 {
		t.Fatalf("cross-namespace Secret allowed by flag: got %d %s", rec.Code, rec.Body)
	}
}
