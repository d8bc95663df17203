package identity

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

func TestAnnotationsRoundTrip(t *testing.T) {
	res := Resolution{Identities: []Resolved{
		{Namespace: "default", Name: "demo", ClientID: "c-demo"},
		{Namespace: "default", Name: "sp", ClientID: "c-sp"},
	}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: res.Annotations()}}
	want := []types.NamespacedName{{Namespace: "default", Name: "demo"}, {Namespace: "default", Name: "sp"}}
	if diff := cmp.Diff(want, Admitted(pod)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := pod.Annotations[aadv1.AnnotationClientIDs]; got != "c-demo,c-sp" {
		t.Errorf("client-ids = %q", got)
	}
}

func TestAdmitted(t *testing.T) {
	tests := []struct {
		name, value string
		want        []types.NamespacedName
	}{
		{"absent", "", nil},
		{"one", "ns/a", []types.NamespacedName{{Namespace: "ns", Name: "a"}}},
		{"spaces are trimmed", " ns/a , ns/b", []types.NamespacedName{{Namespace: "ns", Name: "a"}, {Namespace: "ns", Name: "b"}}},
		{"entries that name no identity are skipped", "a,/b,ns/,ns/a/b,,ns/c", []types.NamespacedName{{Namespace: "ns", Name: "c"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{aadv1.AnnotationIdentities: tt.value}}}
			if diff := cmp.Diff(tt.want, Admitted(pod)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestGate(t *testing.T) {
	other := corev1.PodSchedulingGate{Name: "example.com/other"}
	pod := &corev1.Pod{Spec: corev1.PodSpec{SchedulingGates: []corev1.PodSchedulingGate{other, {Name: aadv1.SchedulingGate}}}}
	if !HasGate(pod) {
		t.Fatal("HasGate = false with the gate present")
	}
	RemoveGate(pod)
	if HasGate(pod) || !cmp.Equal(pod.Spec.SchedulingGates, []corev1.PodSchedulingGate{other}) {
		t.Errorf("after RemoveGate: %v, want only %v", pod.Spec.SchedulingGates, other)
	}
}
