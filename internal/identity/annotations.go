package identity

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// Annotations encodes the resolution as the pod annotations the webhook
// writes: namespace/name pairs and client IDs, in the same sorted order.
func (r Resolution) Annotations() map[string]string {
	keys := make([]string, 0, len(r.Identities))
	ids := make([]string, 0, len(r.Identities))
	for _, id := range r.Identities {
		keys = append(keys, id.Key().String())
		ids = append(ids, id.ClientID)
	}
	return map[string]string{
		aadv1.AnnotationIdentities: strings.Join(keys, ","),
		aadv1.AnnotationClientIDs:  strings.Join(ids, ","),
	}
}

// Admitted parses the identities annotation of a pod. Entries that are not
// a namespace/name pair are skipped: they cannot name an AzureIdentity, and
// readers must fail closed on them. Whether the annotation may be trusted
// at all is the reader's rule, not the codec's.
func Admitted(pod *corev1.Pod) []types.NamespacedName {
	v := pod.Annotations[aadv1.AnnotationIdentities]
	if v == "" {
		return nil
	}
	var ids []types.NamespacedName
	for _, s := range strings.Split(v, ",") {
		ns, name, ok := strings.Cut(strings.TrimSpace(s), "/")
		if ok && ns != "" && name != "" && !strings.Contains(name, "/") {
			ids = append(ids, types.NamespacedName{Namespace: ns, Name: name})
		}
	}
	return ids
}

// Live tells pods that may still use an identity: neither succeeded nor
// failed.
func Live(pod *corev1.Pod) bool {
	return pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}
