package assigner

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
)

func TestLoadAzureConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		env     map[string]string
		want    AzureConfig
		wantErr bool
	}{
		{
			name: "file",
			path: write("full.json", `{"cloud":"AzurePublicCloud","tenantId":"t","subscriptionId":"s","resourceGroup":"rg","aadClientId":"c","aadClientSecret":"x","useManagedIdentityExtension":false,"userAssignedIdentityID":"u","other":1}`),
			want: AzureConfig{Cloud: "AzurePublicCloud", TenantID: "t", SubscriptionID: "s", ResourceGroup: "rg", AADClientID: "c", AADClientSecret: "x", UserAssignedIdentityID: "u"},
		},
		{
			name: "environment fills what the file lacks",
			path: write("partial.json", `{"tenantId":"t","useManagedIdentityExtension":true}`),
			env:  map[string]string{"AZURE_TENANT_ID": "ignored", "AZURE_SUBSCRIPTION_ID": "s2"},
			want: AzureConfig{TenantID: "t", SubscriptionID: "s2", UseManagedIdentityExtension: true},
		},
		{name: "missing file: environment only", path: filepath.Join(dir, "none.json"), env: map[string]string{"AZURE_CLIENT_ID": "c"}, want: AzureConfig{AADClientID: "c"}},
		{name: "malformed file", path: write("bad.json", `{"tenantId":`), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"AZURE_ENVIRONMENT", "AZURE_TENANT_ID", "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"} {
				t.Setenv(k, tc.env[k])
			}
			got, err := LoadAzureConfig(tc.path)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestCloudConfiguration(t *testing.T) {
	tests := []struct {
		cloud, arm, authority string
		wantARM, wantAuth     string
		wantErr               bool
	}{
		{cloud: "", wantARM: cloud.AzurePublic.Services[cloud.ResourceManager].Endpoint, wantAuth: cloud.AzurePublic.ActiveDirectoryAuthorityHost},
		{cloud: "AzureChinaCloud", wantARM: cloud.AzureChina.Services[cloud.ResourceManager].Endpoint, wantAuth: cloud.AzureChina.ActiveDirectoryAuthorityHost},
		{cloud: "AzurePublicCloud", arm: "https://127.0.0.1:1/", authority: "https://127.0.0.1:2/", wantARM: "https://127.0.0.1:1/", wantAuth: "https://127.0.0.1:2/"},
		{cloud: "Mars", wantErr: true},
	}
	for _, tc := range tests {
		cfg, err := AzureConfig{Cloud: tc.cloud}.CloudConfiguration(tc.arm, tc.authority)
		if (err != nil) != tc.wantErr {
			t.Fatalf("%q: err = %v", tc.cloud, err)
		}
		if err != nil {
			continue
		}
		if got := cfg.Services[cloud.ResourceManager].Endpoint; got != tc.wantARM || cfg.ActiveDirectoryAuthorityHost != tc.wantAuth {
			t.Errorf("%q: ARM %q authority %q", tc.cloud, got, cfg.ActiveDirectoryAuthorityHost)
		}
	}
	// Overriding must not change the shared cloud.AzurePublic value.
	if cloud.AzurePublic.Services[cloud.ResourceManager].Endpoint == "https://127.0.0.1:1/" {
		t.Error("override leaked into cloud.AzurePublic")
	}
}

func TestCredentialChoice(t *testing.T) {
	tests := []struct {
		name    string
		cfg     AzureConfig
		want    string
		wantErr bool
	}{
		{name: "service principal secret", cfg: AzureConfig{TenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47", AADClientID: "c", AADClientSecret: "x"}, want: "*azidentity.ClientSecretCredential"},
		{name: "secret without tenant", cfg: AzureConfig{AADClientID: "c", AADClientSecret: "x"}, wantErr: true},
		{name: "managed identity", cfg: AzureConfig{UseManagedIdentityExtension: true, UserAssignedIdentityID: "u"}, want: "*azidentity.ManagedIdentityCredential"},
		{name: "msi placeholder client ID means managed identity", cfg: AzureConfig{AADClientID: "msi", AADClientSecret: "msi", UseManagedIdentityExtension: true}, want: "*azidentity.ManagedIdentityCredential"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cred, err := tc.cfg.Credential(cloud.AzurePublic, nil, false)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && fmt.Sprintf("%T", cred) != tc.want {
				t.Errorf("credential %T, want %s", cred, tc.want)
			}
		})
	}
}
