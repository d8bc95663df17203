package assigner

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// AzureConfig is the subset of the cloud provider's azure.json the
// assigner reads.
type AzureConfig struct {
	Cloud                       string `json:"cloud"`
	TenantID                    string `json:"tenantId"`
	SubscriptionID              string `json:"subscriptionId"`
	ResourceGroup               string `json:"resourceGroup"`
	AADClientID                 string `json:"aadClientId"`
	AADClientSecret             string `json:"aadClientSecret"`
	UseManagedIdentityExtension bool   `json:"useManagedIdentityExtension"`
	UserAssignedIdentityID      string `json:"userAssignedIdentityID"`
}

// LoadAzureConfig reads path if it exists and fills what is missing from
// AZURE_* environment variables.
func LoadAzureConfig(path string) (AzureConfig, error) {
	var c AzureConfig
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &c); err != nil {
			return c, fmt.Errorf("parsing %s: %w", path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return c, fmt.Errorf("reading %s: %w", path, err)
	}
	for _, f := range []struct {
		field *string
		env   string
	}{
		{&c.Cloud, "AZURE_ENVIRONMENT"}, {&c.TenantID, "AZURE_TENANT_ID"}, {&c.SubscriptionID, "AZURE_SUBSCRIPTION_ID"},
		{&c.ResourceGroup, "AZURE_RESOURCE_GROUP"}, {&c.AADClientID, "AZURE_CLIENT_ID"}, {&c.AADClientSecret, "AZURE_CLIENT_SECRET"},
	} {
		if *f.field == "" {
			*f.field = os.Getenv(f.env)
		}
	}
	return c, nil
}

// CloudConfiguration is the azcore cloud for c.Cloud with the ARM endpoint
// and AAD authority overridden where given (tests point them at the fake).
func (c AzureConfig) CloudConfiguration(armEndpoint, authorityHost string) (cloud.Configuration, error) {
	var cfg cloud.Configuration
	switch strings.ToLower(c.Cloud) {
	case "", "azurepubliccloud", "azurecloud":
		cfg = cloud.AzurePublic
	case "azurechinacloud":
		cfg = cloud.AzureChina
	case "azureusgovernmentcloud", "azureusgovernment":
		cfg = cloud.AzureGovernment
	default:
		return cfg, fmt.Errorf("unknown cloud %q: want AzurePublicCloud, AzureChinaCloud or AzureUSGovernmentCloud", c.Cloud)
	}
	services := map[cloud.ServiceName]cloud.ServiceConfiguration{}
	for k, v := range cfg.Services {
		services[k] = v
	}
	if armEndpoint != "" {
		rm := services[cloud.ResourceManager]
		rm.Endpoint = armEndpoint
		services[cloud.ResourceManager] = rm
	}
	cfg.Services = services
	if authorityHost != "" {
		cfg.ActiveDirectoryAuthorityHost = authorityHost
	}
	return cfg, nil
}

// Credential picks the credential azure.json describes: a service
// principal secret, the node's (user-assigned) managed identity, or else
// azidentity's default chain (environment, workload identity, …). A
// private authority (tests) skips instance discovery, which would go to
// the public cloud.
func (c AzureConfig) Credential(cfg cloud.Configuration, transport policy.Transporter, privateAuthority bool) (azcore.TokenCredential, error) {
	opts := azcore.ClientOptions{Cloud: cfg, Transport: transport}
	switch {
	case c.AADClientSecret != "" && c.AADClientID != "" && c.AADClientID != "msi":
		if c.TenantID == "" {
			return nil, errors.New("azure config has aadClientSecret but no tenantId")
		}
		return azidentity.NewClientSecretCredential(c.TenantID, c.AADClientID, c.AADClientSecret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: privateAuthority})
	case c.UseManagedIdentityExtension:
		mo := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: opts}
		if c.UserAssignedIdentityID != "" {
			mo.ID = azidentity.ClientID(c.UserAssignedIdentityID)
		}
		return azidentity.NewManagedIdentityCredential(mo)
	default:
		return azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: privateAuthority})
	}
}

// ARMOptions are the ARM client options: azcore's own retries are off, as
// the pool controller retries (and honours Retry-After across requests).
func ARMOptions(cfg cloud.Configuration, transport *http.Client) *arm.ClientOptions {
	o := &arm.ClientOptions{ClientOptions: policy.ClientOptions{Cloud: cfg, Retry: policy.RetryOptions{MaxRetries: -1}}}
	if transport != nil {
		o.Transport = transport
	}
	return o
}
