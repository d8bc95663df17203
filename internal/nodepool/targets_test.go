package nodepool

import (
	"errors"
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

// linux labels a node as NMI's default coverage expects.
func linux(labels map[string]string) map[string]string {
	labels[corev1.LabelOSStable] = "linux"
	return labels
}

func TestTargets(t *testing.T) {
	nodes := []corev1.Node{
		node("a0", "a", linux(map[string]string{"pool": "a"})),
		node("a1", "a", linux(map[string]string{"pool": "a"})),
		node("b0", "b", linux(map[string]string{"pool": "b", "gpu": "true"}), corev1.Taint{Key: "gpu", Effect: corev1.TaintEffectNoSchedule}),
		node("c0", "c", linux(map[string]string{"pool": "c"}), corev1.Taint{Key: aadv1.NMINotReadyTaint, Effect: corev1.TaintEffectNoSchedule},
			corev1.Taint{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoExecute}),
		node("d0", "d", linux(map[string]string{"pool": "d"}), corev1.Taint{Key: "soft", Effect: corev1.TaintEffectPreferNoSchedule}),
		node("w0", "w", map[string]string{"pool": "w", corev1.LabelOSStable: "windows"}),
		{ObjectMeta: metav1.ObjectMeta{Name: "kind", Labels: map[string]string{"pool": "x"}}, Spec: corev1.NodeSpec{ProviderID: "kind://docker/x"}},
	}
	affinity := func(key string, values ...string) *corev1.Affinity {
		return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: key, Operator: corev1.NodeSelectorOpIn, Values: values}}}},
		}}}
	}
	linuxOnly := Default()
	tests := []struct {
		name    string
		spec    corev1.PodSpec
		nmi     *Coverage // nil: linuxOnly
		want    []string
		wantErr error
	}{
		{name: "everything untainted or tolerated-by-design, where NMI runs", want: []string{"a", "c", "d"}},
		{name: "toleration opens tainted pool", spec: corev1.PodSpec{Tolerations: []corev1.Toleration{{Key: "gpu", Operator: corev1.TolerationOpExists}}}, want: []string{"a", "b", "c", "d"}},
		{name: "node selector", spec: corev1.PodSpec{NodeSelector: map[string]string{"pool": "a"}}, want: []string{"a"}},
		{name: "required affinity", spec: corev1.PodSpec{Affinity: affinity("pool", "c", "d")}, want: []string{"c", "d"}},
		{name: "required affinity that includes a pool without NMI", spec: corev1.PodSpec{Affinity: affinity("pool", "a", "w")}, want: []string{"a"}},
		{name: "selector matches only tainted pool", spec: corev1.PodSpec{NodeSelector: map[string]string{"gpu": "true"}}, wantErr: ErrNoPool},
		{name: "selector matches only a pool without NMI", spec: corev1.PodSpec{NodeSelector: map[string]string{corev1.LabelOSStable: "windows"}}, wantErr: ErrNotCovered},
		{name: "scheduled pod targets its node's pool", spec: corev1.PodSpec{NodeName: "b0"}, want: []string{"b"}},
		{name: "scheduled on a node without NMI", spec: corev1.PodSpec{NodeName: "w0"}, wantErr: ErrNotCovered},
		{name: "scheduled on unknown node", spec: corev1.PodSpec{NodeName: "zz"}, wantErr: errAny},
		{name: "NMI's own selection: one pool", nmi: ptrTo(mustCoverage(t, `{"nodeSelector":{"pool":"a"}}`)), want: []string{"a"}},
		{name: "NMI not tolerating a taint the pod tolerates", spec: corev1.PodSpec{NodeSelector: map[string]string{"gpu": "true"}, Tolerations: []corev1.Toleration{{Key: "gpu", Operator: corev1.TolerationOpExists}}},
			nmi: ptrTo(mustCoverage(t, `{"tolerations":[{"key":"other","operator":"Exists"}]}`)), wantErr: ErrNotCovered},
		{name: "no coverage known: nothing is covered", nmi: &Coverage{}, wantErr: ErrNotCovered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nmi := linuxOnly
			if tc.nmi != nil {
				nmi = *tc.nmi
			}
			pools, err := Targets(&corev1.Pod{Spec: tc.spec}, nodes, nmi)
			switch {
			case tc.wantErr == nil && err != nil, tc.wantErr != nil && err == nil:
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.wantErr != nil && !errors.Is(tc.wantErr, errAny) && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
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

// errAny: any error will do.
var errAny = errors.New("any error")

func mustCoverage(t *testing.T, s string) Coverage {
	t.Helper()
	c, err := ParseCoverage(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ptrTo[T any](v T) *T { return &v }

// NMI's DaemonSet runs where its selection and tolerations allow, and on
// nodes whose conditions the DaemonSet controller tolerates for it.
func TestCoverage(t *testing.T) {
	tainted := func(key string, effect corev1.TaintEffect) *corev1.Node {
		n := node("n", "p", linux(map[string]string{}), corev1.Taint{Key: key, Effect: effect})
		return &n
	}
	plain := node("n", "p", linux(map[string]string{}))
	tests := []struct {
		name, coverage string
		node           *corev1.Node
		want           bool
	}{
		{"default: Linux node", DefaultCoverage, &plain, true},
		{"default: node without an OS label", DefaultCoverage, ptrTo(node("n", "p", nil)), false},
		{"default: any taint", DefaultCoverage, tainted("dedicated", corev1.TaintEffectNoExecute), true},
		{"untolerated NoSchedule taint", `{}`, tainted("dedicated", corev1.TaintEffectNoSchedule), false},
		{"PreferNoSchedule does not keep NMI off", `{}`, tainted("dedicated", corev1.TaintEffectPreferNoSchedule), true},
		{"tolerated taint", `{"tolerations":[{"operator":"Exists"}]}`, tainted("dedicated", corev1.TaintEffectNoExecute), true},
		{"cordoned: DaemonSets tolerate it", `{}`, tainted(corev1.TaintNodeUnschedulable, corev1.TaintEffectNoSchedule), true},
		{"NMI's startup taint", `{}`, tainted(aadv1.NMINotReadyTaint, corev1.TaintEffectNoSchedule), true},
		{"required affinity", `{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/os","operator":"NotIn","values":["linux"]}]}]}}}}`, &plain, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := mustCoverage(t, tc.coverage).Covers(tc.node); got != tc.want {
				t.Errorf("Covers = %v, want %v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{`{"nodeSelectors":{}}`, `not json`, `{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"a","operator":"Bogus"}]}]}}}}`} {
		if _, err := ParseCoverage(bad); err == nil {
			t.Errorf("ParseCoverage(%s) accepted", bad)
		}
	}
}
