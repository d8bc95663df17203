package identity

import (
	"slices"

	corev1 "k8s.io/api/core/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// HasGate reports whether the pod is held by the identity-assignment
// scheduling gate.
func HasGate(pod *corev1.Pod) bool {
	return slices.ContainsFunc(pod.Spec.SchedulingGates, isOurGate)
}

// RemoveGate drops the identity-assignment gate from the pod, leaving other
// gates in place.
func RemoveGate(pod *corev1.Pod) {
	pod.Spec.SchedulingGates = slices.DeleteFunc(pod.Spec.SchedulingGates, isOurGate)
}

func isOurGate(g corev1.PodSchedulingGate) bool { return g.Name == aadv1.SchedulingGate }
