package identity

import (
	"errors"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

func TestRecordName(t *testing.T) {
	p, _ := nodepool.ParseID("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/a")
	q, _ := nodepool.ParseID("/subscriptions/S/resourcegroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/A")
	other, _ := nodepool.ParseID("/subscriptions/s/resourceGroups/rg2/providers/Microsoft.Compute/virtualMachineScaleSets/a")
	long, _ := nodepool.ParseID("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/A_Very.Long_VM-name-that-goes-on-and-on-and-on-")
	if RecordName(p) != RecordName(q) {
		t.Error("record name depends on ID case")
	}
	if RecordName(p) == RecordName(other) {
		t.Error("pools of the same name in two resource groups share a record")
	}
	if n := RecordName(long); len(n) > 63 || strings.ContainsAny(n, "._") || n != strings.ToLower(n) {
		t.Errorf("record name %q is not a DNS label", n)
	}
}

func TestCheckAssignment(t *testing.T) {
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "id"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "C1", ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"}}
	rec := func(state aadv1.AssignmentState, external bool, mutate func(*aadv1.IdentityAssignment)) *aadv1.IdentityAssignment {
		r := &aadv1.IdentityAssignment{ClientID: "c1", ResourceID: id.Spec.ResourceID, State: state, External: external, LastError: "ARM says no"}
		if mutate != nil {
			mutate(r)
		}
		return r
	}
	for _, tc := range []struct {
		name          string
		rec           *aadv1.IdentityAssignment
		allowExternal bool
		reason        string
		pending       bool
	}{
		{"assigned by us", rec(aadv1.StateAssigned, false, nil), false, "", false},
		{"no record", nil, false, ReasonNotAssigned, true},
		{"no state yet", rec("", false, nil), false, ReasonNotAssigned, true},
		{"assigning", rec(aadv1.StateAssigning, false, nil), false, ReasonNotAssigned, true},
		{"unassigning", rec(aadv1.StateUnassigning, false, nil), false, ReasonNotAssigned, false},
		{"failed, e.g. ARM reports another client ID", rec(aadv1.StateFailed, false, nil), false, ReasonAssignmentFailed, false},
		{"external", rec(aadv1.StateAssigned, true, nil), false, ReasonExternal, false},
		{"external allowed", rec(aadv1.StateAssigned, true, nil), true, "", false},
		{"client ID edited since", rec(aadv1.StateAssigned, false, func(s *aadv1.IdentityAssignment) { s.ClientID = "c0" }), false, ReasonIdentityChanged, true},
		{"resource ID edited since", rec(aadv1.StateAssigned, false, func(s *aadv1.IdentityAssignment) { s.ResourceID += "-old" }), false, ReasonIdentityChanged, true},
		{"record for the resource's Unicode twin (U+017F for s)", rec(aadv1.StateAssigned, false, func(s *aadv1.IdentityAssignment) {
			s.ResourceID = strings.Replace(s.ResourceID, "/subscriptions/", "/\u017fubscriptions/", 1)
		}), false, ReasonIdentityChanged, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckAssignment(tc.rec, id, tc.allowExternal)
			var ae *AssignmentError
			switch {
			case tc.reason == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.reason == "":
			case !errors.As(err, &ae):
				t.Fatalf("err = %v, want reason %s", err, tc.reason)
			case ae.Reason != tc.reason || ae.Pending != tc.pending:
				t.Fatalf("reason %s pending %v (%s), want %s pending %v", ae.Reason, ae.Pending, ae.Message, tc.reason, tc.pending)
			}
		})
	}
}
