package assigner

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

func uami(i int) string {
	return fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id%d", i)
}

func uamis(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, uami(i))
	}
	return out
}

func actualOf(system bool, ids ...string) Actual {
	a := Actual{SystemAssigned: system, UserAssigned: map[string]bool{}}
	for _, id := range ids {
		a.UserAssigned[strings.ToLower(id)] = true
	}
	return a
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name   string
		actual Actual
		add    []string
		remove []string
		want   []Patch
	}{
		{name: "nothing to do", actual: actualOf(true, uami(1)), add: []string{uami(1)}, remove: []string{uami(2)}},
		{name: "first identity, no system", actual: actualOf(false), add: []string{uami(1)}, want: []Patch{{Type: TypeUserAssigned, Add: []string{uami(1)}}}},
		{name: "first identity keeps system", actual: actualOf(true), add: []string{uami(1)}, want: []Patch{{Type: TypeSystemAssignedUserAssigned, Add: []string{uami(1)}}}},
		{name: "foreign identity stays, only delta sent", actual: actualOf(false, uami(9)), add: []string{uami(1)}, want: []Patch{{Type: TypeUserAssigned, Add: []string{uami(1)}}}},
		{name: "last removed, system kept", actual: actualOf(true, uami(1)), remove: []string{uami(1)}, want: []Patch{{Type: TypeSystemAssigned, Remove: []string{uami(1)}}}},
		{name: "last removed, none left", actual: actualOf(false, uami(1)), remove: []string{uami(1)}, want: []Patch{{Type: TypeNone, Remove: []string{uami(1)}}}},
		{name: "remove one of two", actual: actualOf(false, uami(1), uami(2)), remove: []string{uami(1)}, want: []Patch{{Type: TypeUserAssigned, Remove: []string{uami(1)}}}},
		{name: "case-insensitive IDs", actual: actualOf(false, strings.ToLower(uami(1))), add: []string{uami(1)}, remove: []string{uami(1) + "X"}},
		{name: "add and remove together", actual: actualOf(false, uami(1)), add: []string{uami(2)}, remove: []string{uami(1)}, want: []Patch{{Type: TypeUserAssigned, Add: []string{uami(2)}, Remove: []string{uami(1)}}}},
		{name: "duplicates collapse", actual: actualOf(false), add: []string{uami(1), uami(1)}, want: []Patch{{Type: TypeUserAssigned, Add: []string{uami(1)}}}},
		{
			name: "chunks of 150, adds first", actual: actualOf(true, uamis(1000, 1010)...), add: uamis(0, 200), remove: uamis(1000, 1010),
			want: []Patch{
				{Type: TypeSystemAssignedUserAssigned, Add: uamis(0, 150)},
				{Type: TypeSystemAssignedUserAssigned, Add: uamis(150, 200), Remove: uamis(1000, 1010)},
			},
		},
		{
			name: "chunked removal of everything", actual: actualOf(false, uamis(0, 151)...), remove: uamis(0, 151),
			want: []Patch{{Type: TypeUserAssigned, Remove: uamis(0, 150)}, {Type: TypeNone, Remove: uamis(150, 151)}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Plan(tc.actual, tc.add, tc.remove)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Plan() = %+v\nwant %+v", got, tc.want)
			}
			for _, p := range got {
				if n := len(p.Add) + len(p.Remove); n > MaxIdentitiesPerRequest {
					t.Errorf("patch carries %d identities", n)
				}
			}
		})
	}
}

func TestPoolFromProviderID(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "azure:///subscriptions/s/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-pool1/virtualMachines/3", want: "/subscriptions/s/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-pool1"},
		{in: "azure:///subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1", want: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"},
		{in: "aws:///us-east-1a/i-123", wantErr: true},
		{in: "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb", wantErr: true},
		{in: "azure:///subscriptions//resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tc := range tests {
		got, err := PoolFromProviderID(tc.in)
		if (err != nil) != tc.wantErr || (err == nil && got.ID() != tc.want) {
			t.Errorf("PoolFromProviderID(%q) = %q, %v; want %q, err %v", tc.in, got.ID(), err, tc.want, tc.wantErr)
		}
	}
}

func node(name, pool string, labels map[string]string, taints ...corev1.Taint) corev1.Node {
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.NodeSpec{
			ProviderID: "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/" + pool + "/virtualMachines/0",
			Taints:     taints,
		},
	}
}

func TestTargetPools(t *testing.T) {
	nodes := []corev1.Node{
		node("a0", "a", map[string]string{"pool": "a"}),
		node("a1", "a", map[string]string{"pool": "a"}),
		node("b0", "b", map[string]string{"pool": "b", "gpu": "true"}, corev1.Taint{Key: "gpu", Effect: corev1.TaintEffectNoSchedule}),
		node("c0", "c", map[string]string{"pool": "c"}, corev1.Taint{Key: aadv1.NMINotReadyTaint, Effect: corev1.TaintEffectNoSchedule},
			corev1.Taint{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoExecute}),
		node("d0", "d", map[string]string{"pool": "d"}, corev1.Taint{Key: "soft", Effect: corev1.TaintEffectPreferNoSchedule}),
		{ObjectMeta: metav1.ObjectMeta{Name: "kind", Labels: map[string]string{"pool": "x"}}, Spec: corev1.NodeSpec{ProviderID: "kind://docker/x"}},
	}
	affinity := func(key string, values ...string) *corev1.Affinity {
		return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: key, Operator: corev1.NodeSelectorOpIn, Values: values}}}},
		}}}
	}
	tests := []struct {
		name    string
		spec    corev1.PodSpec
		want    []string
		wantErr bool
	}{
		{name: "everything untainted or tolerated-by-design", want: []string{"a", "c", "d"}},
		{name: "toleration opens tainted pool", spec: corev1.PodSpec{Tolerations: []corev1.Toleration{{Key: "gpu", Operator: corev1.TolerationOpExists}}}, want: []string{"a", "b", "c", "d"}},
		{name: "node selector", spec: corev1.PodSpec{NodeSelector: map[string]string{"pool": "a"}}, want: []string{"a"}},
		{name: "required affinity", spec: corev1.PodSpec{Affinity: affinity("pool", "c", "d")}, want: []string{"c", "d"}},
		{name: "selector matches only tainted pool", spec: corev1.PodSpec{NodeSelector: map[string]string{"gpu": "true"}}, wantErr: true},
		{name: "scheduled pod targets its node's pool", spec: corev1.PodSpec{NodeName: "b0"}, want: []string{"b"}},
		{name: "scheduled on unknown node", spec: corev1.PodSpec{NodeName: "zz"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pools, err := TargetPools(&corev1.Pod{Spec: tc.spec}, nodes)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			var got []string
			for _, p := range pools {
				got = append(got, p.Name)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("pools = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRecordName(t *testing.T) {
	p, _ := ParsePoolID("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/a")
	q, _ := ParsePoolID("/subscriptions/S/resourcegroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/A")
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
