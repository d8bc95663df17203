package nmi

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// podIPIndex indexes the node's pods by every IP in status.podIPs, and pods
// without one under noIP.
const podIPIndex = "status.podIPs"

// noIP is the podIPIndex value of pods whose IP is not reported yet.
const noIP = "none"

// podIPs is the index function for podIPIndex.
func podIPs(o client.Object) []string {
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return nil
	}
	if len(pod.Status.PodIPs) == 0 {
		return []string{noIP}
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

// Refusals that may resolve within moments, as NMI's cache catches up.
const (
	// reasonUnknownCaller: no pod on this node has the source IP.
	reasonUnknownCaller = "unknown_caller"
	// reasonIPMayBeReused: a newer pod without a reported IP may hold it.
	reasonIPMayBeReused = "ip_may_be_reused"
)

// ipReuseWindow bounds how long a pod without a reported IP holds back the
// older pods on its node, from the moment its sandbox may exist (see
// sandboxSince): long enough for the kubelet to report a new sandbox's IP,
// short enough that a pod stuck before its sandbox (waiting for a volume,
// say) does not refuse its neighbours for long. A pod that never gets a
// sandbox holds them back once, for at most this long.
const ipReuseWindow = time.Minute

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
	// Other pods' names stay out of the answer: the caller may be either.
	return nil, forbidden("ambiguous_caller", "Several running pods on this node have IP %s; refusing to guess", ip)
}

// ipMayBeReused refuses the owner of ip while a pod created after it, on
// this node, may have a sandbox whose IP is not reported yet: when the
// owner has ended and the newer pod took its address before this node's
// cache showed either change, the caller is the newer pod. It clears once
// the kubelet reports the newer pod's IP, or ipReuseWindow after its
// sandbox may have come. Without the container runtime's word this is a
// guess; with nmi.criSocket the runtime decides instead.
func ipMayBeReused(ctx context.Context, r client.Reader, owner *corev1.Pod, ip string, now time.Time) error {
	var pending corev1.PodList
	if err := r.List(ctx, &pending, client.MatchingFields{podIPIndex: noIP}); err != nil {
		return fmt.Errorf("listing pods without IP: %w", err)
	}
	for i := range pending.Items {
		p := &pending.Items[i]
		if !live(p) || p.UID == owner.UID || !p.CreationTimestamp.After(owner.CreationTimestamp.Time) {
			continue
		}
		if since, ok := sandboxSince(p); ok && now.Sub(since) < ipReuseWindow {
			return forbidden(reasonIPMayBeReused, "A pod created on this node after the one at IP %s has no IP reported yet and may hold this address; retry in a moment", ip)
		}
	}
	return nil
}

// sandboxSince reports whether the kubelet may have made a sandbox, and so
// taken an IP, for a pod whose IP is not reported, and since when. The
// kubelet writes the PodReadyToStartContainers condition (GA in 1.37) in
// the first status it reports for a pod, False, before it mounts the pod's
// volumes and creates its sandbox, and turns it True once the sandbox has
// its network, possibly before the status that carries the IP. So without
// the condition the pod has no sandbox yet (it counts for nothing, however
// long it stays Pending); with it, a sandbox may be being made (False) or
// exist (True), since the condition's last transition. Kubelets that do
// not report the condition (before 1.29, or with its gate off) set
// status.startTime in that same first status.
func sandboxSince(pod *corev1.Pod) (time.Time, bool) {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReadyToStartContainers && !c.LastTransitionTime.IsZero() {
			return c.LastTransitionTime.Time, true
		}
	}
	if pod.Status.StartTime != nil {
		return pod.Status.StartTime.Time, true
	}
	return time.Time{}, false
}

// admittedIdentities returns the AzureIdentities the webhook admitted for the
// pod. The annotations are trusted only on pods with the binding label: such a
// pod always went through the webhook, which strips annotations a creator set,
// or was created before it and adopted by it (webhook/adopt.go).
func admittedIdentities(pod *corev1.Pod) []types.NamespacedName {
	if _, ok := pod.Labels[aadv1.BindingLabel]; !ok {
		return nil
	}
	return identity.Admitted(pod)
}
