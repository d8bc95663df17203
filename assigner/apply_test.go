package assigner

import (
	"context"
	"errors"
	"net/http"
	"path"
	"reflect"
	"strings"
	"testing"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// fakeARM is one pool's identities in ARM. A PATCH adding a refused
// identity is answered with an ARM 400 naming it; fail, if set, answers
// every PATCH.
type fakeARM struct {
	onPool  map[string]bool // lower-cased resource IDs
	refused map[string]bool
	// clientIDs overrides clientIDOf: what ARM says an identity's client ID is.
	clientIDs map[string]string
	fail      error
	gets      int
	patches   []Patch
}

func (a *fakeARM) Get(context.Context, nodepool.Pool) (Actual, error) {
	a.gets++
	return a.actual(), nil
}

func (a *fakeARM) actual() Actual {
	actual := Actual{UserAssigned: map[string]string{}}
	for id := range a.onPool {
		actual.UserAssigned[id] = clientIDOf(id)
		if c, ok := a.clientIDs[id]; ok {
			actual.UserAssigned[id] = c
		}
	}
	return actual
}

// clientIDOf is the client ID fakeARM reports for a resource ID.
func clientIDOf(resourceID string) string {
	return "client-of-" + path.Base(strings.ToLower(resourceID))
}

func (a *fakeARM) Update(_ context.Context, _ nodepool.Pool, p Patch) (Actual, error) {
	a.patches = append(a.patches, p)
	if a.fail != nil {
		return Actual{}, a.fail
	}
	for _, id := range p.Add {
		if a.refused[id] {
			return Actual{}, errRefused(id)
		}
	}
	if a.onPool == nil {
		a.onPool = map[string]bool{}
	}
	for _, id := range p.Add {
		a.onPool[strings.ToLower(id)] = true
	}
	for _, id := range p.Remove {
		delete(a.onPool, strings.ToLower(id))
	}
	return a.actual(), nil
}

func errRefused(id string) error {
	return armError(http.StatusBadRequest, nil, "FailedIdentityOperation", "Identity '"+id+"' does not exist.")
}

// An identity ARM refuses is dropped from the batch and the rest is sent
// again: the refused one's record becomes Failed, the others Assigned, and
// one whose AzureIdentity names another client ID than ARM reports for its
// resource becomes Failed too.
func TestWriteIsolatesRefusedIdentities(t *testing.T) {
	good1, bad, good2 := uami(1), uami(2), uami(3)
	mispaired := uami(5)
	arm := &fakeARM{refused: map[string]bool{bad: true}, clientIDs: map[string]string{strings.ToLower(mispaired): "someone-else"}}
	actual := actualOf(true)
	refused, err := writeIdentities(context.Background(), arm, testPool, actual, []string{good1, bad, good2, mispaired}, nil)
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	if len(refused) != 1 || !strings.Contains(refused[strings.ToLower(bad)], "FailedIdentityOperation") {
		t.Errorf("refused = %v, want only %s", refused, bad)
	}
	wantPatches := []Patch{
		{Type: TypeSystemAssignedUserAssigned, Add: []string{good1, bad, good2, mispaired}},
		{Type: TypeSystemAssignedUserAssigned, Add: []string{good1, good2, mispaired}},
	}
	if !reflect.DeepEqual(arm.patches, wantPatches) {
		t.Errorf("patches %+v\nwant %+v", arm.patches, wantPatches)
	}
	if !actual.Has(good1) || !actual.Has(good2) || actual.Has(bad) || actual.ClientID(good1) != clientIDOf(good1) {
		t.Errorf("actual after the writes = %v", actual.UserAssigned)
	}
	record := func(id string, state aadv1.AssignmentState) *aadv1.IdentityAssignment {
		return &aadv1.IdentityAssignment{ResourceID: id, ClientID: clientIDOf(id), State: state}
	}
	tests := []struct {
		rec       *aadv1.IdentityAssignment
		wantState aadv1.AssignmentState
		wantError bool
	}{
		{rec: record(good1, aadv1.StateAssigning), wantState: aadv1.StateAssigned},
		{rec: record(bad, aadv1.StateAssigning), wantState: aadv1.StateFailed, wantError: true},
		{rec: record(good2, aadv1.StateFailed), wantState: aadv1.StateAssigned},
		{rec: record(uami(4), aadv1.StateFailed), wantState: aadv1.StateFailed}, // not retried this round
		{rec: record(mispaired, aadv1.StateAssigning), wantState: aadv1.StateFailed, wantError: true},
	}
	for _, tc := range tests {
		got := *tc.rec
		assignmentStatus(&got, actual, refused)
		if got.State != tc.wantState || (got.LastError != "") != tc.wantError {
			t.Errorf("%s: entry %+v, want %s (error %v)", tc.rec.ResourceID, got, tc.wantState, tc.wantError)
		}
	}
}

// Any other error stops the writes and is returned.
func TestWriteStopsOnOtherErrors(t *testing.T) {
	transient := errors.New("connection reset")
	arm := &fakeARM{fail: transient}
	_, err := writeIdentities(context.Background(), arm, testPool, actualOf(false), uamis(0, 200), nil)
	if !errors.Is(err, transient) {
		t.Errorf("err = %v, want %v", err, transient)
	}
	if len(arm.patches) != 1 {
		t.Errorf("%d patches sent after a failure, want 1", len(arm.patches))
	}
}
