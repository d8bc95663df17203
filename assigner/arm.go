package assigner

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// ARM reads and patches the identities of VMSS and VMs. Clients are made
// per subscription, as pools may live in several.
type ARM struct {
	cred      azcore.TokenCredential
	opts      *arm.ClientOptions
	pollEvery time.Duration
	// Timeout bounds one request, a PATCH with its long-running operation
	// included; a timed-out request is retried like a 5xx.
	Timeout time.Duration

	mu   sync.Mutex
	vmss map[string]*armcompute.VirtualMachineScaleSetsClient
	vms  map[string]*armcompute.VirtualMachinesClient
}

// NewARM returns an ARM client. Retries are left to the caller (opts should
// disable azcore's), so that a 429 stops every write to its scope, not just
// one request.
func NewARM(cred azcore.TokenCredential, opts *arm.ClientOptions, pollEvery time.Duration) *ARM {
	return &ARM{cred: cred, opts: opts, pollEvery: pollEvery, Timeout: 5 * time.Minute, vmss: map[string]*armcompute.VirtualMachineScaleSetsClient{}, vms: map[string]*armcompute.VirtualMachinesClient{}}
}

func (a *ARM) clients(sub string) (*armcompute.VirtualMachineScaleSetsClient, *armcompute.VirtualMachinesClient, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.vmss[sub]; ok {
		return c, a.vms[sub], nil
	}
	vmss, err := armcompute.NewVirtualMachineScaleSetsClient(sub, a.cred, a.opts)
	if err != nil {
		return nil, nil, fmt.Errorf("creating VMSS client: %w", err)
	}
	vms, err := armcompute.NewVirtualMachinesClient(sub, a.cred, a.opts)
	if err != nil {
		return nil, nil, fmt.Errorf("creating VM client: %w", err)
	}
	a.vmss[sub], a.vms[sub] = vmss, vms
	return vmss, vms, nil
}

// Get reads a pool's identities.
func (a *ARM) Get(ctx context.Context, pool nodepool.Pool) (actual Actual, err error) {
	defer observeARM("get", time.Now(), &err)
	ctx, cancel := context.WithTimeout(ctx, a.Timeout)
	defer cancel()
	vmss, vms, err := a.clients(pool.Subscription)
	if err != nil {
		return Actual{}, err
	}
	if pool.Kind == nodepool.KindVMSS {
		resp, err := vmss.Get(ctx, pool.ResourceGroup, pool.Name, nil)
		if err != nil {
			return Actual{}, err
		}
		return vmssActual(resp.VirtualMachineScaleSet), nil
	}
	resp, err := vms.Get(ctx, pool.ResourceGroup, pool.Name, nil)
	if err != nil {
		return Actual{}, err
	}
	return vmActual(resp.VirtualMachine), nil
}

func vmssActual(v armcompute.VirtualMachineScaleSet) Actual {
	if v.Identity == nil {
		return toActual(nil, nil)
	}
	return toActual(v.Identity.Type, v.Identity.UserAssignedIdentities)
}

func vmActual(v armcompute.VirtualMachine) Actual {
	if v.Identity == nil {
		return toActual(nil, nil)
	}
	return toActual(v.Identity.Type, v.Identity.UserAssignedIdentities)
}

func toActual(typ *armcompute.ResourceIdentityType, ua map[string]*armcompute.UserAssignedIdentitiesValue) Actual {
	actual := Actual{UserAssigned: make(map[string]string, len(ua))}
	actual.SystemAssigned = typ != nil && strings.Contains(string(*typ), TypeSystemAssigned)
	for id, v := range ua {
		clientID := ""
		if v != nil && v.ClientID != nil {
			clientID = *v.ClientID
		}
		actual.UserAssigned[aadv1.IDKey(id)] = clientID
	}
	return actual
}

// Update sends one patch, waits for its long-running operation and
// returns the pool's identities as ARM reports them afterwards.
func (a *ARM) Update(ctx context.Context, pool nodepool.Pool, p Patch) (actual Actual, err error) {
	defer observeARM("patch", time.Now(), &err)
	ctx, cancel := context.WithTimeout(ctx, a.Timeout)
	defer cancel()
	vmss, vms, err := a.clients(pool.Subscription)
	if err != nil {
		return Actual{}, err
	}
	ua := make(map[string]*armcompute.UserAssignedIdentitiesValue, len(p.Add)+len(p.Remove))
	for _, id := range p.Add {
		ua[id] = &armcompute.UserAssignedIdentitiesValue{}
	}
	for _, id := range p.Remove {
		ua[id] = nil // marshalled as null: ARM removes it
	}
	typ := armcompute.ResourceIdentityType(p.Type)
	poll := &runtime.PollUntilDoneOptions{Frequency: a.pollEvery}
	if pool.Kind == nodepool.KindVMSS {
		poller, err := vmss.BeginUpdate(ctx, pool.ResourceGroup, pool.Name, armcompute.VirtualMachineScaleSetUpdate{
			Identity: &armcompute.VirtualMachineScaleSetIdentity{Type: &typ, UserAssignedIdentities: ua},
		}, nil)
		if err != nil {
			return Actual{}, err
		}
		resp, err := poller.PollUntilDone(ctx, poll)
		return vmssActual(resp.VirtualMachineScaleSet), err
	}
	poller, err := vms.BeginUpdate(ctx, pool.ResourceGroup, pool.Name, armcompute.VirtualMachineUpdate{
		Identity: &armcompute.VirtualMachineIdentity{Type: &typ, UserAssignedIdentities: ua},
	}, nil)
	if err != nil {
		return Actual{}, err
	}
	resp, err := poller.PollUntilDone(ctx, poll)
	return vmActual(resp.VirtualMachine), err
}

// retryAfter returns how long a 429 asks callers to wait, and whether err
// is a 429 at all. Retry-After is seconds or an HTTP date; without it, a
// minute, as ARM's throttling windows are.
func retryAfter(err error, now time.Time) (time.Duration, bool) {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusTooManyRequests {
		return 0, false
	}
	h := ""
	if re.RawResponse != nil {
		h = re.RawResponse.Header.Get("Retry-After")
	}
	if s, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(t.Sub(now), 0), true
	}
	return time.Minute, true
}

// badIdentities returns the identities among candidates that an ARM 400
// names, so they can be dropped from the batch.
func badIdentities(err error, candidates []string) []string {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest {
		return nil
	}
	msg := aadv1.IDKey(err.Error())
	var bad []string
	for _, id := range candidates {
		if strings.Contains(msg, aadv1.IDKey(id)) {
			bad = append(bad, id)
		}
	}
	return bad
}

// armErrorText is the ARM error's code and message, for events and
// lastError.
func armErrorText(err error) string {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return fmt.Sprintf("ARM %d %s: %s", re.StatusCode, re.ErrorCode, armMessage(re))
	}
	return err.Error()
}

func armMessage(re *azcore.ResponseError) string {
	// ResponseError.Error() is a multi-line dump; keep the JSON message line.
	for _, line := range strings.Split(re.Error(), "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, `"message"`) {
			return strings.Trim(strings.TrimPrefix(l, `"message":`), ` ",`)
		}
	}
	return http.StatusText(re.StatusCode)
}
