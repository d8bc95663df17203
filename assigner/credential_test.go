package assigner_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/google/uuid"

	"github.com/aad-pod-identity/aad-pod-identity/assigner"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// TestAzureConfigCredential follows the binary's path from azure.json to
// an ARM write: the service principal in aadClientId/aadClientSecret gets a
// token from the fake AAD (azidentity ClientSecretCredential, over HTTPS
// from the test CA), and the fake ARM accepts only tokens that AAD signed
// for the ARM audience.
func TestAzureConfigCredential(t *testing.T) {
	ca, err := testca.New("fake-azure-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := fakeazure.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	aad, aadSrv, err := fakeazure.StartAAD(signer, ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(aadSrv.Close)
	tenant, sub := uuid.NewString(), uuid.NewString()
	sp := aad.CreateServicePrincipal(tenant)

	state := fakeazure.NewState()
	armSrv, err := fakeazure.StartARM(state, ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(armSrv.Close)
	armSrv.VerifyTokens(signer, cloud.AzurePublic.Services[cloud.ResourceManager].Audience)
	fp := state.AddPool(fakeazure.KindVMSS, sub, "mc-rg", "pool0", 1, true)
	id := state.CreateIdentity(sub, "ids-rg", "id0")
	pool, err := nodepool.ParseID(fp.ID)
	if err != nil {
		t.Fatal(err)
	}

	for _, k := range []string{"AZURE_ENVIRONMENT", "AZURE_TENANT_ID", "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"} {
		t.Setenv(k, "")
	}
	// credential loads azure.json as the binary does, with the endpoints
	// overridden to the fakes (--arm-endpoint, --aad-authority-host) and
	// the ARM audience given.
	credential := func(t *testing.T, secret, audience string) (azcore.TokenCredential, cloud.Configuration) {
		data, err := json.Marshal(map[string]any{"cloud": "AzurePublicCloud", "tenantId": tenant, "subscriptionId": sub,
			"resourceGroup": "mc-rg", "aadClientId": sp.AppID, "aadClientSecret": secret, "useManagedIdentityExtension": false})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "azure.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		az, err := assigner.LoadAzureConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := az.CloudConfiguration(armSrv.URL, aadSrv.URL+"/")
		if err != nil {
			t.Fatal(err)
		}
		rm := cfg.Services[cloud.ResourceManager]
		rm.Audience = audience
		cfg.Services[cloud.ResourceManager] = rm
		cred, err := az.Credential(cfg, ca.Client(), true)
		if err != nil {
			t.Fatal(err)
		}
		return cred, cfg
	}

	tests := []struct {
		name     string
		secret   string
		audience string
		static   bool   // send a bearer the fake AAD did not issue
		wantErr  string // "" means the GET and PATCH succeed
	}{
		{name: "client secret from azure.json", secret: sp.Secret, audience: cloud.AzurePublic.Services[cloud.ResourceManager].Audience},
		{name: "wrong secret: AAD refuses", secret: "wrong", audience: cloud.AzurePublic.Services[cloud.ResourceManager].Audience, wantErr: "AADSTS7000215"},
		{name: "token for another audience: ARM refuses", secret: sp.Secret, audience: "https://vault.azure.net", wantErr: "InvalidAuthenticationToken"},
		{name: "token not from the fake AAD: ARM refuses", static: true, audience: cloud.AzurePublic.Services[cloud.ResourceManager].Audience, wantErr: "InvalidAuthenticationToken"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cred, cfg := credential(t, tc.secret, tc.audience)
			if tc.static {
				cred = fakeazure.StaticCredential{}
			}
			client := assigner.NewARM(cred, assigner.ARMOptions(cfg, ca.Client()), 50*time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			before := len(armSrv.Callers())
			actual, err := client.Get(ctx, pool)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("GET: err = %v, want %q", err, tc.wantErr)
				}
				if n := len(armSrv.Callers()); n != before {
					t.Errorf("ARM accepted %d requests", n-before)
				}
				return
			}
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			for _, p := range assigner.Patches(actual, []string{id.ResourceID}, nil) {
				after, err := client.Update(ctx, pool, p)
				if err != nil {
					t.Fatalf("PATCH: %v", err)
				}
				// The client ID comes from ARM's answer to the PATCH.
				if got := after.ClientID(id.ResourceID); got != id.ClientID {
					t.Errorf("ARM's answer to the PATCH gives client ID %q, want %q", got, id.ClientID)
				}
			}
			if !state.Assigned(fp.ID, id.ClientID) {
				t.Error("identity not on the pool after the PATCH")
			}
			// GET, PATCH and at least one operation poll, each with a token
			// the fake AAD issued to the app of azure.json.
			callers := armSrv.Callers()[before:]
			if len(callers) < 3 || slices.ContainsFunc(callers, func(c string) bool { return c != sp.AppID }) {
				t.Errorf("ARM callers %v, want at least 3 × %s", callers, sp.AppID)
			}
		})
	}
}
