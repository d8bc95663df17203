package assigner

import (
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

func TestRecordName(t *testing.T) {
	p, _ := nodepool.ParseID("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/a")
	q, _ := nodepool.ParseID("/subscriptions/S/resourcegroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/A")
	if RecordName(types.NamespacedName{Namespace: "ns", Name: "id"}, p) != RecordName(types.NamespacedName{Namespace: "ns", Name: "id"}, q) {
		t.Error("record name depends on ID case")
	}
	if RecordName(types.NamespacedName{Namespace: "ns", Name: "id"}, p) == RecordName(types.NamespacedName{Namespace: "ns", Name: "id2"}, p) {
		t.Error("record names collide")
	}
	if n := RecordName(types.NamespacedName{Namespace: "a-very-long-namespace-name-for-testing", Name: "and-an-even-longer-identity-name-here.x"}, p); len(n) > 63 {
		t.Errorf("record name %q too long", n)
	}
}
