package identity

import (
	"errors"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

func TestAssignmentName(t *testing.T) {
	p, _ := nodepool.ParseID("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/a")
	q, _ := nodepool.ParseID("/subscriptions/S/resourcegroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/A")
	if AssignmentName(types.NamespacedName{Namespace: "ns", Name: "id"}, p) != AssignmentName(types.NamespacedName{Namespace: "ns", Name: "id"}, q) {
		t.Error("record name depends on ID case")
	}
	if AssignmentName(types.NamespacedName{Namespace: "ns", Name: "id"}, p) == AssignmentName(types.NamespacedName{Namespace: "ns", Name: "id2"}, p) {
		t.Error("record names collide")
	}
	if n := AssignmentName(types.NamespacedName{Namespace: "a-very-long-namespace-name-for-testing", Name: "and-an-even-longer-identity-name-here.x"}, p); len(n) > 63 {
		t.Errorf("record name %q too long", n)
	}
}

func TestCheckAssignment(t *testing.T) {
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "id"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "C1", ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"}}
	rec := func(state aadv1.AssignmentState, external bool, mutate func(*aadv1.AzureAssignedIdentitySpec)) *aadv1.AzureAssignedIdentity {
		r := &aadv1.AzureAssignedIdentity{
			Spec:   aadv1.AzureAssignedIdentitySpec{ClientID: "c1", ResourceID: id.Spec.ResourceID},
			Status: aadv1.AzureAssignedIdentityStatus{Status: state, External: external, LastError: "ARM says no"},
		}
		if mutate != nil {
			mutate(&r.Spec)
		}
		return r
	}
	for _, tc := range []struct {
		name          string
		rec           *aadv1.AzureAssignedIdentity
		allowExternal bool
		reason        string
		pending       bool
	}{
		{"assigned by us", rec(aadv1.StateAssigned, false, nil), false, "", false},
		{"no record", nil, false, ReasonNotAssigned, true},
		{"assigning", rec(aadv1.StateAssigning, false, nil), false, ReasonNotAssigned, true},
		{"unassigning", rec(aadv1.StateUnassigning, false, nil), false, ReasonNotAssigned, false},
		{"failed, e.g. ARM reports another client ID", rec(aadv1.StateFailed, false, nil), false, ReasonAssignmentFailed, false},
		{"external", rec(aadv1.StateAssigned, true, nil), false, ReasonExternal, false},
		{"external allowed", rec(aadv1.StateAssigned, true, nil), true, "", false},
		{"client ID edited since", rec(aadv1.StateAssigned, false, func(s *aadv1.AzureAssignedIdentitySpec) { s.ClientID = "c0" }), false, ReasonIdentityChanged, true},
		{"resource ID edited since", rec(aadv1.StateAssigned, false, func(s *aadv1.AzureAssignedIdentitySpec) { s.ResourceID += "-old" }), false, ReasonIdentityChanged, true},
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
