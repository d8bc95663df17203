package nodepool

import (
	"bytes"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"
)

// Coverage is where NMI runs: its DaemonSet's node selector, required node
// affinity and tolerations. Identities go only onto pools of nodes NMI
// covers: on any other node nothing stands between a pod and IMDS, so every
// pod there, of any namespace, would get every identity of the pool.
type Coverage struct {
	NodeSelector map[string]string   `json:"nodeSelector,omitempty"`
	Affinity     *corev1.Affinity    `json:"affinity,omitempty"`
	Tolerations  []corev1.Toleration `json:"tolerations,omitempty"`

	required nodeaffinity.RequiredNodeAffinity
	parsed   bool
}

// DefaultCoverage is the chart's NMI DaemonSet: Linux nodes (NMI's only
// platform), whatever their taints.
const DefaultCoverage = `{"nodeSelector":{"kubernetes.io/os":"linux"},"tolerations":[{"operator":"Exists"}]}`

// Default is DefaultCoverage, parsed.
func Default() Coverage {
	c, err := ParseCoverage(DefaultCoverage)
	if err != nil {
		panic(err) // a constant, parsed by the tests
	}
	return c
}

// ParseCoverage reads a Coverage from JSON (the chart passes NMI's
// DaemonSet selection); unknown fields are refused, so a typo cannot widen
// it.
func ParseCoverage(s string) (Coverage, error) {
	var c Coverage
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Coverage{}, fmt.Errorf("parsing NMI's node selection: %w", err)
	}
	c.required = nodeaffinity.GetRequiredNodeAffinity(&corev1.Pod{Spec: corev1.PodSpec{NodeSelector: c.NodeSelector, Affinity: c.Affinity}})
	// An invalid affinity term fails every match; say so now, not per pod.
	if _, err := c.required.Match(&corev1.Node{}); err != nil {
		return Coverage{}, fmt.Errorf("NMI's node affinity: %w", err)
	}
	c.parsed = true
	return c, nil
}

// Covers reports whether NMI's DaemonSet runs a pod on node. A zero
// Coverage (not parsed) covers no node: fail closed.
func (c Coverage) Covers(node *corev1.Node) bool {
	if !c.parsed {
		return false
	}
	if ok, err := c.required.Match(node); err != nil || !ok {
		return false
	}
	_, untolerated := corev1helpers.FindMatchingUntoleratedTaint(klog.Background(), node.Spec.Taints, c.Tolerations, daemonTaint, false)
	return !untolerated
}

// daemonTaint is a taint that keeps NMI's DaemonSet off a node: besides
// those that go away by themselves (schedulingTaint), the DaemonSet
// controller tolerates node conditions for its pods.
func daemonTaint(t *corev1.Taint) bool {
	switch t.Key {
	case corev1.TaintNodeUnschedulable, corev1.TaintNodeMemoryPressure, corev1.TaintNodeDiskPressure,
		corev1.TaintNodePIDPressure, corev1.TaintNodeNetworkUnavailable:
		return false
	}
	return schedulingTaint(t)
}
