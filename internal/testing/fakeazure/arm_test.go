package fakeazure

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

const (
	testSub = "00000000-0000-0000-0000-000000000001"
	testRG  = "rg"
)

func startFake(t *testing.T) (*State, *ARM, *armcompute.VirtualMachineScaleSetsClient, *armcompute.VirtualMachinesClient) {
	t.Helper()
	ca, err := testca.New("fake-azure-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	state := NewState()
	a, err := StartARM(state, ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	opts := &arm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud:     cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{cloud.ResourceManager: {Endpoint: a.URL, Audience: "https://management.core.windows.net/"}}},
		Transport: ca.Client(),
		Retry:     policy.RetryOptions{MaxRetries: -1},
	}}
	vmss, err := armcompute.NewVirtualMachineScaleSetsClient(testSub, StaticCredential{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	vms, err := armcompute.NewVirtualMachinesClient(testSub, StaticCredential{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return state, a, vmss, vms
}

func patchVMSS(ctx context.Context, c *armcompute.VirtualMachineScaleSetsClient, name, typ string, ids map[string]bool) error {
	ua := map[string]*armcompute.UserAssignedIdentitiesValue{}
	for id, add := range ids {
		if add {
			ua[id] = &armcompute.UserAssignedIdentitiesValue{}
		} else {
			ua[id] = nil
		}
	}
	t := armcompute.ResourceIdentityType(typ)
	poller, err := c.BeginUpdate(ctx, testRG, name, armcompute.VirtualMachineScaleSetUpdate{Identity: &armcompute.VirtualMachineScaleSetIdentity{Type: &t, UserAssignedIdentities: ua}}, nil)
	if err != nil {
		return err
	}
	_, err = poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 20 * time.Millisecond})
	return err
}

func TestARMIdentityMerge(t *testing.T) {
	ctx := context.Background()
	state, fake, vmss, _ := startFake(t)
	a := state.CreateIdentity(testSub, testRG, "a")
	b := state.CreateIdentity(testSub, testRG, "b")
	missing := "/subscriptions/" + testSub + "/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/missing"

	tests := []struct {
		name       string
		system     bool
		before     []string
		typ        string
		patch      map[string]bool
		wantStatus int
		wantCode   string
		wantUser   []string
		wantSystem bool
	}{
		{name: "add keeps system", system: true, typ: TypeSystemAssignedUserAssigned, patch: map[string]bool{a.ResourceID: true}, wantUser: []string{a.ResourceID}, wantSystem: true},
		{name: "null removes", before: []string{a.ResourceID, b.ResourceID}, typ: TypeUserAssigned, patch: map[string]bool{a.ResourceID: false}, wantUser: []string{b.ResourceID}},
		{name: "UserAssigned drops system", system: true, typ: TypeUserAssigned, patch: map[string]bool{a.ResourceID: true}, wantUser: []string{a.ResourceID}},
		{name: "removing last to SystemAssigned", system: true, before: []string{a.ResourceID}, typ: TypeSystemAssigned, patch: map[string]bool{a.ResourceID: false}, wantSystem: true},
		{name: "removing last to None", before: []string{a.ResourceID}, typ: TypeNone, patch: map[string]bool{a.ResourceID: false}},
		{name: "UserAssigned with none left", before: []string{a.ResourceID}, typ: TypeUserAssigned, patch: map[string]bool{a.ResourceID: false}, wantStatus: 400, wantCode: "InvalidParameter", wantUser: []string{a.ResourceID}},
		{name: "unknown identity", typ: TypeUserAssigned, patch: map[string]bool{missing: true, a.ResourceID: true}, wantStatus: 400, wantCode: "FailedIdentityOperation"},
		{name: "bad type", typ: "Both", patch: map[string]bool{a.ResourceID: true}, wantStatus: 400, wantCode: "InvalidParameter"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := "vmss" + string(rune('a'+i))
			p := state.AddPool(KindVMSS, testSub, testRG, name, 1, tc.system)
			for _, id := range tc.before {
				if err := state.SetUserAssigned(p.ID, id, true); err != nil {
					t.Fatal(err)
				}
			}
			err := patchVMSS(ctx, vmss, name, tc.typ, tc.patch)
			var re *azcore.ResponseError
			switch {
			case tc.wantStatus == 0 && err != nil:
				t.Fatalf("PATCH: %v", err)
			case tc.wantStatus != 0 && (!errors.As(err, &re) || re.StatusCode != tc.wantStatus || re.ErrorCode != tc.wantCode):
				t.Fatalf("PATCH error = %v, want %d %s", err, tc.wantStatus, tc.wantCode)
			}
			got, _ := state.Pool(p.ID)
			if (got.SystemAssigned != "") != tc.wantSystem {
				t.Errorf("system-assigned = %q, want present=%v", got.SystemAssigned, tc.wantSystem)
			}
			if len(got.UserAssigned) != len(tc.wantUser) {
				t.Errorf("user-assigned = %v, want %v", got.UserAssigned, tc.wantUser)
			}
			for _, id := range tc.wantUser {
				if _, ok := got.UserAssigned[key(id)]; !ok {
					t.Errorf("user-assigned lacks %s", id)
				}
			}
		})
	}
	if fake.Calls()["GET operation"] == 0 {
		t.Error("no long-running operation was polled")
	}
}

func TestARMGetAndFaults(t *testing.T) {
	ctx := context.Background()
	state, fake, vmss, vms := startFake(t)
	a := state.CreateIdentity(testSub, testRG, "a")
	p := state.AddPool(KindVMSS, testSub, testRG, "pool", 2, true)
	vm := state.AddPool(KindVM, testSub, testRG, "vm1", 0, false)
	if err := state.SetUserAssigned(vm.ID, a.ResourceID, true); err != nil {
		t.Fatal(err)
	}

	got, err := vms.Get(ctx, testRG, "vm1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Identity == nil || *got.Identity.Type != TypeUserAssigned || got.Identity.UserAssignedIdentities[a.ResourceID] == nil || *got.Identity.UserAssignedIdentities[a.ResourceID].ClientID != a.ClientID {
		t.Fatalf("VM identity = %+v", got.Identity)
	}

	tests := []struct {
		name       string
		setup      func()
		wantStatus int
		wantRetry  string
	}{
		{name: "throttled", setup: func() { fake.InjectFault(Fault{Method: http.MethodPatch, Status: 429, RetryAfter: "7"}) }, wantStatus: 429, wantRetry: "7"},
		{name: "server error", setup: func() { fake.InjectFault(Fault{Method: http.MethodPatch, Pool: p.ID, Status: 500}) }, wantStatus: 500},
		{name: "conflict while another write runs", setup: func() { fake.Busy(p.ID, time.Minute) }, wantStatus: 409},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			err := patchVMSS(ctx, vmss, "pool", TypeSystemAssignedUserAssigned, map[string]bool{a.ResourceID: true})
			var re *azcore.ResponseError
			if !errors.As(err, &re) || re.StatusCode != tc.wantStatus {
				t.Fatalf("err = %v, want status %d", err, tc.wantStatus)
			}
			if got := re.RawResponse.Header.Get("Retry-After"); got != tc.wantRetry {
				t.Errorf("Retry-After = %q, want %q", got, tc.wantRetry)
			}
		})
	}
	if _, err := vmss.Get(ctx, testRG, "nope", nil); err == nil {
		t.Error("GET of a missing VMSS succeeded")
	}
	if c := fake.Calls(); c["PATCH virtualMachineScaleSets"] != 3 || c["GET virtualMachines"] != 1 || c["GET virtualMachineScaleSets"] != 1 {
		t.Errorf("calls = %v", c)
	}
}

func TestARMWriteLatency(t *testing.T) {
	ctx := context.Background()
	state, fake, vmss, _ := startFake(t)
	a := state.CreateIdentity(testSub, testRG, "a")
	p := state.AddPool(KindVMSS, testSub, testRG, "pool", 1, false)
	fake.SetWriteLatency(300 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- patchVMSS(ctx, vmss, "pool", TypeUserAssigned, map[string]bool{a.ResourceID: true}) }()
	// While the first write runs, a second one is refused with 409.
	for len(fake.Writes()) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	var re *azcore.ResponseError
	if err := patchVMSS(ctx, vmss, "pool", TypeUserAssigned, map[string]bool{a.ResourceID: true}); !errors.As(err, &re) || re.StatusCode != 409 {
		t.Fatalf("concurrent write: %v, want 409", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !state.Assigned(p.ID, a.ClientID) {
		t.Fatal("identity not assigned after the operation completed")
	}
}

func TestARMListScaleSets(t *testing.T) {
	ctx := context.Background()
	state, _, vmss, _ := startFake(t)
	state.AddPool(KindVMSS, testSub, testRG, "pool-b", 1, true)
	state.AddPool(KindVMSS, testSub, testRG, "pool-a", 1, true)
	state.AddPool(KindVM, testSub, testRG, "vm1", 0, false)
	state.AddPool(KindVMSS, testSub, "other", "pool-c", 1, true)

	tests := []struct {
		rg   string
		want []string
	}{
		{rg: testRG, want: []string{"pool-a", "pool-b"}},
		{rg: "RG", want: []string{"pool-a", "pool-b"}}, // ARM IDs are case-insensitive
		{rg: "empty", want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.rg, func(t *testing.T) {
			var got []string
			pager := vmss.NewListPager(tc.rg, nil)
			for pager.More() {
				page, err := pager.NextPage(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range page.Value {
					got = append(got, *s.Name)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("scale sets in %s = %v, want %v", tc.rg, got, tc.want)
			}
		})
	}
}
