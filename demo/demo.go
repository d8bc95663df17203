// Package demo is the program the walkthrough's demo pod runs: every period
// it reads the instance metadata, lists the resource group's scale sets
// through ARM with a token from IMDS, and gets a token for the user-assigned
// identity, logging one line per step so `kubectl logs` shows whether pod
// identity works.
package demo

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/go-logr/logr"
)

// ManagementResource is the ARM audience the demo asks tokens for.
const ManagementResource = "https://management.azure.com/"

// DefaultPeriod is the time between two rounds of checks.
const DefaultPeriod = 100 * time.Second

// InstancePath is the instance metadata query the demo logs.
const InstancePath = "/metadata/instance?api-version=2017-08-01"

// Config is what the demo needs; the flags fill it.
type Config struct {
	SubscriptionID   string
	ResourceGroup    string
	IdentityClientID string
	Period           time.Duration
	// MetadataEndpoint is IMDS (scheme://host[:port]), ARMEndpoint the ARM
	// base URL.
	MetadataEndpoint string
	ARMEndpoint      string
	// HTTPClient sends every request; nil means http.DefaultClient.
	HTTPClient *http.Client
}

// Validate rejects a config the demo cannot run with.
func (c Config) Validate() error {
	var errs []error
	for flag, v := range map[string]string{
		"--subscription-id": c.SubscriptionID, "--resource-group": c.ResourceGroup,
		"--identity-client-id": c.IdentityClientID, "--metadata-endpoint": c.MetadataEndpoint,
		"--arm-endpoint": c.ARMEndpoint,
	} {
		if strings.TrimSpace(v) == "" {
			errs = append(errs, fmt.Errorf("%s is required", flag))
		}
	}
	if c.Period <= 0 {
		errs = append(errs, fmt.Errorf("--period must be positive, got %s", c.Period))
	}
	return errors.Join(errs...)
}

// Demo runs the checks.
type Demo struct {
	cfg    Config
	client *http.Client
	vmss   *armcompute.VirtualMachineScaleSetsClient
}

// New validates cfg and builds the ARM client.
func New(cfg Config) (*Demo, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	client := cfg.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	cred := imdsCredential{endpoint: strings.TrimSuffix(cfg.MetadataEndpoint, "/"), client: client}
	vmss, err := armcompute.NewVirtualMachineScaleSetsClient(cfg.SubscriptionID, cred, &arm.ClientOptions{
		ClientOptions: policy.ClientOptions{
			Cloud: cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
				// The scope is Audience+"/.default"; IMDS wants the resource with its slash.
				cloud.ResourceManager: {Endpoint: cfg.ARMEndpoint, Audience: strings.TrimSuffix(ManagementResource, "/")},
			}},
			Transport: client,
			Retry:     policy.RetryOptions{MaxRetries: -1}, // the next period is the retry
		},
	})
	if err != nil {
		return nil, fmt.Errorf("creating scale set client: %w", err)
	}
	return &Demo{cfg: cfg, client: client, vmss: vmss}, nil
}

// Run checks at once, then once per period until ctx ends.
func (d *Demo) Run(ctx context.Context) {
	tick := time.NewTicker(d.cfg.Period)
	defer tick.Stop()
	// Once logs each failure itself; the demo goes on checking regardless.
	_ = d.Once(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			_ = d.Once(ctx)
		}
	}
}

// Once runs every check, logging one line each, and returns the failures
// joined.
func (d *Demo) Once(ctx context.Context) error {
	log := logr.FromContextOrDiscard(ctx)
	cred := imdsCredential{endpoint: strings.TrimSuffix(d.cfg.MetadataEndpoint, "/"), client: d.client}
	var errs []error

	instanceURL := cred.endpoint + InstancePath
	if body, err := get(ctx, d.client, instanceURL); err != nil {
		log.Error(err, "failed to query instance metadata", "url", instanceURL)
		errs = append(errs, err)
	} else {
		log.Info("queried instance metadata", "url", instanceURL, "response", string(body))
	}

	if names, err := d.listScaleSets(ctx); err != nil {
		log.Error(err, "failed to list VMSS instances from ARM via AAD Pod Identity", "resourceGroup", d.cfg.ResourceGroup)
		errs = append(errs, err)
	} else {
		log.Info("successfully listed VMSS instances from ARM via AAD Pod Identity", "resourceGroup", d.cfg.ResourceGroup, "vmss", names)
	}

	tokenURL := cred.endpoint + TokenPath
	if _, err := cred.token(ctx, ManagementResource); err != nil {
		log.Error(err, "failed to acquire a service principal token", "url", tokenURL)
		errs = append(errs, err)
	} else {
		log.Info("successfully acquired a service principal token", "url", tokenURL)
	}

	cred.clientID = d.cfg.IdentityClientID
	if _, err := cred.token(ctx, ManagementResource); err != nil {
		log.Error(err, "failed to acquire a service principal token using a user-assigned identity", "url", tokenURL, "clientID", cred.clientID)
		errs = append(errs, err)
	} else {
		log.Info("successfully acquired a service principal token using a user-assigned identity", "url", tokenURL, "clientID", cred.clientID)
	}
	return errors.Join(errs...)
}

func (d *Demo) listScaleSets(ctx context.Context) ([]string, error) {
	names := []string{}
	pager := d.vmss.NewListPager(d.cfg.ResourceGroup, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing scale sets in %s: %w", d.cfg.ResourceGroup, err)
		}
		for _, s := range page.Value {
			if s != nil && s.Name != nil {
				names = append(names, *s.Name)
			}
		}
	}
	return names, nil
}
