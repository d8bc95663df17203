package fakeazure

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

func TestIMDSIssuesOnlyAssignedIdentities(t *testing.T) {
	state := NewState()
	signer, err := NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	a := state.CreateIdentity("sub", "rg", "a")
	b := state.CreateIdentity("sub", "rg", "b")
	pool := state.AddPool(KindVMSS, "sub", "rg", "pool", 1, true)
	if err := state.SetUserAssigned(pool.ID, a.ResourceID, true); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(&IMDS{State: state, Signer: signer, PoolID: pool.ID, VMName: "pool_0"})
	defer srv.Close()
	tests := []struct {
		name   string
		query  string
		status int
		appID  string
		mirID  string
	}{
		{"assigned by client_id", "&client_id=" + a.ClientID, 200, a.ClientID, a.ResourceID},
		{"assigned by mi_res_id", "&mi_res_id=" + a.ResourceID, 200, a.ClientID, a.ResourceID},
		{"none named: system-assigned", "", 200, pool.SystemAssigned, pool.ID},
		{"not assigned", "&client_id=" + b.ClientID, 400, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"+tt.query, nil)
			req.Header.Set("Metadata", "true")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]string
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d %v, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.status != 200 {
				if body["error_description"] != "Identity not found" {
					t.Fatalf("got %v", body)
				}
				return
			}
			c, err := signer.Parse(body["access_token"])
			if err != nil || c.AppID != tt.appID || c.XMSMirID != tt.mirID || c.TID != state.TenantID {
				t.Fatalf("claims %+v, %v; want appid %s xms_mirid %s", c, err, tt.appID, tt.mirID)
			}
		})
	}
}

// startTestAAD serves a new AAD over HTTPS until the test ends.
func startTestAAD(t *testing.T) (*Signer, *testca.CA, *AAD, *httptest.Server) {
	t.Helper()
	signer, err := NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := testca.New("fake-azure-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	aad, srv, err := StartAAD(signer, ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return signer, ca, aad, srv
}

func TestAADClientCredentials(t *testing.T) {
	signer, ca, aad, srv := startTestAAD(t)
	opts := azcore.ClientOptions{
		Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: srv.URL + "/"},
		Transport: ca.Client(),
	}

	certPEM, cert, err := NewClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	sp := aad.CreateServicePrincipal("tenant-1", cert)
	secretCred, err := azidentity.NewClientSecretCredential("tenant-1", sp.AppID, sp.Secret, &azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	certs, key, err := azidentity.ParseCertificates(certPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	certCred, err := azidentity.NewClientCertificateCredential("tenant-1", sp.AppID, certs, key, &azidentity.ClientCertificateCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	wrongCred, err := azidentity.NewClientSecretCredential("tenant-1", sp.AppID, "wrong", &azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	for name, cred := range map[string]interface {
		GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error)
	}{"secret": secretCred, "certificate": certCred} {
		tok, err := cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c, err := signer.Parse(tok.Token)
		if err != nil || c.AppID != sp.AppID || c.OID != sp.ObjectID || c.TID != "tenant-1" || c.Audience[0] != "https://vault.azure.net" {
			t.Fatalf("%s: claims %+v, %v", name, c, err)
		}
	}
	if _, err := wrongCred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{"r/.default"}}); err == nil {
		t.Fatal("wrong secret got a token")
	}
}
