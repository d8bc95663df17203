package nodepool

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

func node(name, pool string, labels map[string]string, taints ...corev1.Taint) corev1.Node {
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.NodeSpec{
			ProviderID: "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/" + pool + "/virtualMachines/0",
			Taints:     taints,
		},
	}
}

func TestTargets(t *testing.T) {
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
			pools, err := Targets(&corev1.Pod{Spec: tc.spec}, nodes)
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
