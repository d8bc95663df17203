package assigner

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// The written status names the pool for kubectl get, counts the entries by
// state, and never shows pods next to unneededSince, whatever the entry in
// memory says (an earlier assigner wrote such entries).
func TestRecordStatus(t *testing.T) {
	since := &metav1.MicroTime{Time: t0}
	tests := []struct {
		name      string
		entry     aadv1.IdentityAssignment
		wantPods  int32
		wantCount [3]int32 // assigned, assigning, failed
	}{
		{name: "needed", entry: aadv1.IdentityAssignment{State: aadv1.StateAssigned, Pods: 3}, wantPods: 3, wantCount: [3]int32{1, 0, 0}},
		{name: "unneeded", entry: aadv1.IdentityAssignment{State: aadv1.StateAssigned, Pods: 2, UnneededSince: since}, wantPods: 0, wantCount: [3]int32{1, 0, 0}},
		{name: "being removed", entry: aadv1.IdentityAssignment{State: aadv1.StateUnassigning, Pods: 1, UnneededSince: since}, wantPods: 0, wantCount: [3]int32{0, 1, 0}},
		{name: "assigning", entry: aadv1.IdentityAssignment{State: aadv1.StateAssigning, Pods: 4}, wantPods: 4, wantCount: [3]int32{0, 1, 0}},
		{name: "no state yet", entry: aadv1.IdentityAssignment{Pods: 1}, wantPods: 1, wantCount: [3]int32{0, 1, 0}},
		{name: "failed", entry: aadv1.IdentityAssignment{State: aadv1.StateFailed, Pods: 5}, wantPods: 5, wantCount: [3]int32{0, 0, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			entry := tc.entry
			st := recordStatus(testPool.Name, map[types.NamespacedName]*aadv1.IdentityAssignment{{Namespace: "ns", Name: "a"}: &entry})
			if st.NodePoolName != testPool.Name {
				t.Errorf("nodePoolName %q, want %q", st.NodePoolName, testPool.Name)
			}
			if got := st.Identities[0].Pods; got != tc.wantPods {
				t.Errorf("pods %d, want %d", got, tc.wantPods)
			}
			if got := [3]int32{st.Assigned, st.Assigning, st.Failed}; got != tc.wantCount {
				t.Errorf("assigned, assigning, failed = %v, want %v", got, tc.wantCount)
			}
			if entry.Pods != tc.entry.Pods {
				t.Errorf("the entry in memory changed: pods %d", entry.Pods)
			}
		})
	}
}
