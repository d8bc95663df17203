package nodepool

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// ErrNoPool explains why a pending pod has no target pool.
var ErrNoPool = errors.New("no node pool matches the pod's node selector, required node affinity and tolerations")

// ErrNotCovered explains why a pod's identities go on no pool: it can only
// run where NMI does not, so no pod there could be kept from them.
var ErrNotCovered = errors.New("the pod can only run on nodes where NMI does not run (NMI's node selector, affinity and tolerations leave them out), and identities are never put where every pod could read them from IMDS; give the pod a node selector or affinity for nodes NMI covers (for example kubernetes.io/os: linux)")

// Targets returns the pools a pod may run on, sorted by key: its node's
// pool once scheduled, else the pools of every Node the scheduler could
// pick (node selector, required affinity, untolerated NoSchedule/NoExecute
// taints) and NMI covers. Taints that go away by themselves do not count:
// NMI's startup taint and the node lifecycle's not-ready/unreachable ones (a
// new node of a pool carries them until its kubelet reports ready).
func Targets(pod *corev1.Pod, nodes []corev1.Node, nmi Coverage) ([]Pool, error) {
	if pod.Spec.NodeName != "" {
		for i := range nodes {
			if nodes[i].Name == pod.Spec.NodeName {
				if !nmi.Covers(&nodes[i]) {
					return nil, fmt.Errorf("node %s: %w", nodes[i].Name, ErrNotCovered)
				}
				p, err := FromProviderID(nodes[i].Spec.ProviderID)
				if err != nil {
					return nil, fmt.Errorf("node %s: %w", nodes[i].Name, err)
				}
				return []Pool{p}, nil
			}
		}
		return nil, fmt.Errorf("node %s of the pod not found", pod.Spec.NodeName)
	}
	affinity := nodeaffinity.GetRequiredNodeAffinity(pod)
	byKey := map[string]Pool{}
	uncovered := false
	for i := range nodes {
		node := &nodes[i]
		if ok, err := affinity.Match(node); err != nil {
			return nil, fmt.Errorf("pod's node affinity: %w", err)
		} else if !ok {
			continue
		}
		if _, untolerated := corev1helpers.FindMatchingUntoleratedTaint(klog.Background(), node.Spec.Taints, pod.Spec.Tolerations, schedulingTaint, false); untolerated {
			continue
		}
		p, err := FromProviderID(node.Spec.ProviderID)
		if err != nil {
			continue // not an Azure node (or not yet initialised): nothing to assign to
		}
		if !nmi.Covers(node) {
			uncovered = true
			continue
		}
		byKey[p.Key()] = p
	}
	switch {
	case len(byKey) == 0 && uncovered:
		return nil, ErrNotCovered
	case len(byKey) == 0:
		return nil, ErrNoPool
	}
	// Sorted by key, computed once per pool: a burst's pods each target
	// every pool, and comparing by Key() in the sort was a third of the
	// assigner's CPU at 50 pools.
	pools := make([]Pool, 0, len(byKey))
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		pools = append(pools, byKey[key])
	}
	return pools, nil
}

func schedulingTaint(t *corev1.Taint) bool {
	switch t.Key {
	case aadv1.NMINotReadyTaint, corev1.TaintNodeNotReady, corev1.TaintNodeUnreachable:
		return false
	}
	return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
}
