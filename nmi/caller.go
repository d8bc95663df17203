package nmi

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// podIPIndex indexes the node's pods by every IP in status.podIPs.
const podIPIndex = "status.podIPs"

// podIPs is the index function for podIPIndex.
func podIPs(o client.Object) []string {
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return nil
	}
	ips := make([]string, 0, len(pod.Status.PodIPs))
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	return ips
}

// live reports whether a pod may own its IP: host-network pods share the
// node's address and finished or terminating pods may have handed theirs on.
func live(pod *corev1.Pod) bool {
	return !pod.Spec.HostNetwork && pod.DeletionTimestamp == nil &&
		(pod.Status.Phase == corev1.PodPending || pod.Status.Phase == corev1.PodRunning)
}

// reasonUnknownCaller is the refusal of a source IP no pod on this node has.
const reasonUnknownCaller = "unknown_caller"

// callerPod finds the one live pod on this node with the source IP.
func callerPod(ctx context.Context, r client.Reader, ip string) (*corev1.Pod, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.MatchingFields{podIPIndex: ip}); err != nil {
		return nil, fmt.Errorf("listing pods with IP %s: %w", ip, err)
	}
	var found []*corev1.Pod
	for i := range pods.Items {
		if live(&pods.Items[i]) {
			found = append(found, &pods.Items[i])
		}
	}
	switch len(found) {
	case 0:
		return nil, forbidden(reasonUnknownCaller, "No running pod on this node has IP %s; only pods on this node may request tokens (host-network pods cannot)", ip)
	case 1:
		return found[0], nil
	}
	names := make([]string, len(found))
	for i, p := range found {
		names[i] = p.Namespace + "/" + p.Name
	}
	return nil, forbidden("ambiguous_caller", "Several running pods on this node have IP %s (%s); refusing to guess", ip, strings.Join(names, ", "))
}

// admittedIdentities returns the AzureIdentities the webhook admitted for the
// pod. The annotations are trusted only on pods with the binding label: such a
// pod always went through the webhook, which strips annotations a creator set.
func admittedIdentities(pod *corev1.Pod) []types.NamespacedName {
	if _, ok := pod.Labels[aadv1.BindingLabel]; !ok {
		return nil
	}
	return identity.Admitted(pod)
}
