package assigner

import (
	"maps"
	"slices"
	"testing"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// The cache keeps what the assigner reads of a pod, and the pods of one set
// of pools share its annotation.
func TestPodForAssigner(t *testing.T) {
	pools := testPool.ID() + "," + testPool.ID() + "2"
	full := func(name string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: "ns", Name: name, UID: "uid-p", ResourceVersion: "7", CreationTimestamp: metav1.Unix(10, 0),
				Labels: map[string]string{aadv1.BindingLabel: "sel"},
				Annotations: map[string]string{
					aadv1.AnnotationNodePools:  string([]byte(pools)), // a copy per pod, as decoded
					aadv1.AnnotationIdentities: "ns/a", "kubectl.kubernetes.io/last-applied-configuration": "{}",
				},
				ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
			},
			Spec: corev1.PodSpec{
				Containers:      []corev1.Container{{Name: "app", Image: "demo"}},
				NodeSelector:    map[string]string{"pool": "a"},
				Tolerations:     []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpExists}},
				SchedulingGates: []corev1.PodSchedulingGate{{Name: aadv1.SchedulingGate}},
			},
			Status: corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled}}},
		}
	}
	want := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "ns", Name: "p0", UID: "uid-p", ResourceVersion: "7", CreationTimestamp: metav1.Unix(10, 0),
			Labels:      map[string]string{aadv1.BindingLabel: "sel"},
			Annotations: map[string]string{aadv1.AnnotationNodePools: pools, aadv1.AnnotationIdentities: "ns/a"},
		},
		Spec: corev1.PodSpec{
			NodeSelector:    map[string]string{"pool": "a"},
			Tolerations:     []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpExists}},
			SchedulingGates: []corev1.PodSchedulingGate{{Name: aadv1.SchedulingGate}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodPending},
	}
	got := make([]*corev1.Pod, 2)
	for i, name := range []string{"p0", "p1"} {
		obj, err := podForAssigner(full(name))
		if err != nil {
			t.Fatal(err)
		}
		got[i] = obj.(*corev1.Pod)
	}
	if !equality.Semantic.DeepEqual(got[0], want) {
		t.Errorf("cached pod %+v, want %+v", got[0], want)
	}
	a, b := got[0].Annotations[aadv1.AnnotationNodePools], got[1].Annotations[aadv1.AnnotationNodePools]
	if unsafe.StringData(a) != unsafe.StringData(b) {
		t.Error("two pods of the same pools hold two copies of their node-pools annotation")
	}
	tombstone := toolscache.DeletedFinalStateUnknown{Key: "ns/p0"}
	if obj, err := podForAssigner(tombstone); err != nil || obj != tombstone {
		t.Errorf("tombstone transformed to %v, %v", obj, err)
	}
}

// Pods are indexed by their set of pools; a pool's pods are those of the
// sets holding it; a set is forgotten once no pod is indexed under it.
func TestPoolSets(t *testing.T) {
	pod := func(pools *string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{}}}
		if pools != nil {
			p.Annotations[aadv1.AnnotationNodePools] = *pools
		}
		return p
	}
	ptr := func(s string) *string { return &s }
	a, b := "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/A", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/b"
	sets := newPoolSets()
	tests := []struct {
		name  string
		pools *string
		// same: the key of the step named, a set already indexed
		same string
	}{
		{name: "no node-pools annotation: untargeted"},
		{name: "no pool", pools: ptr("")},
		{name: "both pools", pools: ptr(a + "," + b)},
		{name: "pool b", pools: ptr(b)},
		{name: "both pools again", pools: ptr(a + "," + b), same: "both pools"},
	}
	keys := map[string][]string{}
	for _, tc := range tests {
		keys[tc.name] = sets.index(pod(tc.pools))
		got := keys[tc.name]
		switch {
		case tc.pools == nil && (len(got) != 1 || got[0] != untargeted):
			t.Errorf("%s: keys %v, want [%s]", tc.name, got, untargeted)
		case tc.pools != nil && *tc.pools == "" && len(got) != 0:
			t.Errorf("%s: keys %v, want none", tc.name, got)
		case tc.same != "" && !equality.Semantic.DeepEqual(got, keys[tc.same]):
			t.Errorf("%s: keys %v, want those of %s, %v", tc.name, got, tc.same, keys[tc.same])
		}
	}
	both, onlyB := keys["both pools"][0], keys["pool b"][0]
	if both == onlyB {
		t.Fatalf("two sets share key %s", both)
	}
	lower := aadv1.IDKey(a)
	inA := sets.containing(lower)
	if len(inA) != 1 || inA[both] == 0 {
		t.Fatalf("sets holding %s: %v, want %s", lower, inA, both)
	}
	inB := sets.containing(aadv1.IDKey(b))
	if !slices.Equal(slices.Sorted(maps.Keys(inB)), slices.Sorted(maps.Keys(map[string]uint64{both: 0, onlyB: 0}))) {
		t.Fatalf("sets holding b: %v, want %s and %s", inB, both, onlyB)
	}

	// A pod indexed under a set after its pods were listed keeps it.
	sets.index(pod(ptr(b)))
	sets.forget(onlyB, inB[onlyB])
	if _, ok := sets.containing(aadv1.IDKey(b))[onlyB]; !ok {
		t.Error("a set indexed after its listing was forgotten")
	}
	sets.forget(both, inA[both])
	if _, ok := sets.containing(lower)[both]; ok {
		t.Error("a set no pod was indexed under since its empty listing is still known")
	}
}
