package assigner

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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

// The records of two pools share the strings of the identities they both
// hold, and keep no managedFields.
func TestRecordForAssigner(t *testing.T) {
	record := func(pool string) *aadv1.AzureAssignedIdentity {
		return &aadv1.AzureAssignedIdentity{
			ObjectMeta: metav1.ObjectMeta{Name: pool, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "assigner"}}},
			Status: aadv1.AzureAssignedIdentityStatus{Identities: []aadv1.IdentityAssignment{{
				AzureIdentityRef: aadv1.IdentityReference{Namespace: "ns", Name: "a"},
				ClientID:         string([]byte(clientIDOf(uami(1)))), ResourceID: string([]byte(uami(1))), State: aadv1.StateAssigned,
			}}},
		}
	}
	var got [2]*aadv1.AzureAssignedIdentity
	for i, pool := range []string{"pool-a", "pool-b"} {
		obj, err := recordForAssigner(record(pool))
		if err != nil {
			t.Fatal(err)
		}
		got[i] = obj.(*aadv1.AzureAssignedIdentity)
	}
	if got[0].ManagedFields != nil {
		t.Errorf("managedFields kept: %v", got[0].ManagedFields)
	}
	a, b := got[0].Status.Identities[0], got[1].Status.Identities[0]
	if unsafe.StringData(a.ResourceID) != unsafe.StringData(b.ResourceID) || unsafe.StringData(a.ClientID) != unsafe.StringData(b.ClientID) {
		t.Error("two records hold two copies of an identity's IDs")
	}
	if !equality.Semantic.DeepEqual(a, record("x").Status.Identities[0]) {
		t.Errorf("entry %+v changed", a)
	}
}

// The tally counts each pool's live pods by AzureIdentity, and the
// untargeted pods apart, as pods come, change and go; it keeps nothing of a
// pod gone.
func TestPodTally(t *testing.T) {
	const a, b = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/A", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/b"
	poolA, poolB := aadv1.IDKey(a), aadv1.IDKey(b)
	pod := func(name string, created int, ids string, pools ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(created) * time.Second)),
			Annotations: map[string]string{aadv1.AnnotationIdentities: ids}}}
		if len(pools) > 0 {
			p.Annotations[aadv1.AnnotationNodePools] = strings.Join(pools, ",")
		}
		return p
	}
	key := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }
	count := func(pods, oldest int) podCount {
		return podCount{pods: int32(pods), oldest: t0.Add(time.Duration(oldest) * time.Second)}
	}
	tally := newPodTally()
	tests := []struct {
		name           string
		change         func()
		wantA, wantB   map[types.NamespacedName]podCount
		wantUntargeted []types.NamespacedName
	}{
		{
			name:   "a pod on both pools",
			change: func() { tally.observe(pod("p0", 2, "ns/a", a+","+b)) },
			wantA:  map[types.NamespacedName]podCount{key("a"): count(1, 2)},
			wantB:  map[types.NamespacedName]podCount{key("a"): count(1, 2)},
		},
		{
			name:   "an older pod on pool b with two identities",
			change: func() { tally.observe(pod("p1", 1, "ns/a,ns/b", b)) },
			wantA:  map[types.NamespacedName]podCount{key("a"): count(1, 2)},
			wantB:  map[types.NamespacedName]podCount{key("a"): count(2, 1), key("b"): count(1, 1)},
		},
		{
			name:           "an untargeted pod",
			change:         func() { tally.observe(pod("p2", 3, "ns/c")) },
			wantA:          map[types.NamespacedName]podCount{key("a"): count(1, 2)},
			wantB:          map[types.NamespacedName]podCount{key("a"): count(2, 1), key("b"): count(1, 1)},
			wantUntargeted: []types.NamespacedName{key("c")},
		},
		{
			name:   "the untargeted pod targets pool a",
			change: func() { tally.observe(pod("p2", 3, "ns/c", a)) },
			wantA:  map[types.NamespacedName]podCount{key("a"): count(1, 2), key("c"): count(1, 3)},
			wantB:  map[types.NamespacedName]podCount{key("a"): count(2, 1), key("b"): count(1, 1)},
		},
		{
			name: "the older pod succeeded",
			change: func() {
				p := pod("p1", 1, "ns/a,ns/b", b)
				p.Status.Phase = corev1.PodSucceeded
				tally.observe(p)
			},
			wantA: map[types.NamespacedName]podCount{key("a"): count(1, 2), key("c"): count(1, 3)},
			wantB: map[types.NamespacedName]podCount{key("a"): count(1, 2)},
		},
		{
			name:   "a pod admitted for no identity",
			change: func() { tally.observe(pod("p3", 0, "", a)) },
			wantA:  map[types.NamespacedName]podCount{key("a"): count(1, 2), key("c"): count(1, 3)},
			wantB:  map[types.NamespacedName]podCount{key("a"): count(1, 2)},
		},
		{
			name:   "the first pod deleted",
			change: func() { tally.forget(key("p0")) },
			wantA:  map[types.NamespacedName]podCount{key("c"): count(1, 3)},
			wantB:  map[types.NamespacedName]podCount{},
		},
		{
			name:   "every pod deleted",
			change: func() { tally.forget(key("p2")) },
			wantA:  map[types.NamespacedName]podCount{},
			wantB:  map[types.NamespacedName]podCount{},
		},
	}
	for _, tc := range tests {
		tc.change()
		if got := tally.wanted(poolA); !maps.EqualFunc(got, tc.wantA, samePodCount) {
			t.Errorf("%s: pool a wants %v, want %v", tc.name, got, tc.wantA)
		}
		if got := tally.wanted(poolB); !maps.EqualFunc(got, tc.wantB, samePodCount) {
			t.Errorf("%s: pool b wants %v, want %v", tc.name, got, tc.wantB)
		}
		if got := tally.untargetedIdentities(); !slices.Equal(got, tc.wantUntargeted) {
			t.Errorf("%s: untargeted %v, want %v", tc.name, got, tc.wantUntargeted)
		}
	}
	if len(tally.pods) != 0 || len(tally.sets) != 0 || len(tally.untargeted.identities) != 0 {
		t.Errorf("the tally keeps %d pods and %d sets of pools after every pod went", len(tally.pods), len(tally.sets))
	}
}

func samePodCount(a, b podCount) bool { return a.pods == b.pods && a.oldest.Equal(b.oldest) }

// targets matches pool IDs ignoring case.
func TestTargets(t *testing.T) {
	tests := []struct {
		pools string
		want  bool
	}{
		{pools: testPool.ID(), want: true},
		{pools: "/subscriptions/x/other," + strings.ToUpper(testPool.ID()), want: true},
		{pools: testPool.ID() + "2"},
		{pools: ""},
	}
	for _, tc := range tests {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{aadv1.AnnotationNodePools: tc.pools}}}
		if got := targets(pod, testPool.Key()); got != tc.want {
			t.Errorf("targets(%q) = %t, want %t", tc.pools, got, tc.want)
		}
	}
}
