package assigner

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// podForAssigner is the pod cache's transform: it keeps what the assigner
// reads of a pod (its identity, labels, our annotations, what
// nodepool.Targets reads, the gates and the phase) and shares the
// annotation values that many pods repeat. Pods are only ever patched with
// the difference to this copy, so what is left out is never written.
//
// At 10,000 pending pods on 50 pools each pod carried its own copy of the
// same 7.5 KB node-pools annotation: interned, the pods of a burst share one.
func podForAssigner(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone
	}
	return &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			CreationTimestamp: pod.CreationTimestamp, DeletionTimestamp: pod.DeletionTimestamp,
			Labels: pod.Labels, Annotations: ourAnnotations(pod.Annotations),
		},
		Spec: corev1.PodSpec{
			NodeName: pod.Spec.NodeName, NodeSelector: pod.Spec.NodeSelector, Affinity: pod.Spec.Affinity,
			Tolerations: pod.Spec.Tolerations, SchedulingGates: pod.Spec.SchedulingGates,
		},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}, nil
}

// ourAnnotations keeps the annotations this project writes, their values
// interned: the pods of one binding or one set of pools share them.
func ourAnnotations(in map[string]string) map[string]string {
	var out map[string]string
	for k, v := range in {
		if !strings.HasPrefix(k, aadv1.AnnotationPrefix) {
			continue
		}
		if out == nil {
			out = make(map[string]string, 6)
		}
		out[unique.Make(k).Value()] = unique.Make(v).Value()
	}
	return out
}

// poolSets indexes pods by the set of pools they target (their node-pools
// annotation), not by each pool: the pods of a burst share a few sets, so a
// pod is one key of the index instead of one per pool (controller-runtime
// indexes every key twice, by namespace and for all namespaces: 100 keys
// per pod at 50 pools, redone at every pod update). The sets seen are
// registered here, so the pods of a pool are those of the sets holding it.
type poolSets struct {
	mu  sync.Mutex
	seq uint64
	// byValue names each set by its node-pools annotation; byKey holds
	// them by index key.
	byValue map[string]*poolSet
	byKey   map[string]*poolSet
}

// poolSet is one distinct node-pools annotation.
type poolSet struct {
	key, value string
	pools      sets.Set[string] // lower-cased pool IDs
	// indexed is when a pod was last indexed under the set (poolSets.seq).
	indexed uint64
}

func newPoolSets() *poolSets {
	return &poolSets{byValue: map[string]*poolSet{}, byKey: map[string]*poolSet{}}
}

// index is the pod cache's podPoolSetIndex: the key of the pod's pool set,
// or untargeted before the pod controller (or the webhook) has chosen its
// pools. The index calls it under the cache's lock for every pod it adds,
// updates or deletes, so a set is registered before its pods are listed.
func (p *poolSets) index(o client.Object) []string {
	v, ok := o.GetAnnotations()[aadv1.AnnotationNodePools]
	if !ok {
		return []string{untargeted}
	}
	if v == "" {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	s := p.byValue[v]
	if s == nil {
		s = &poolSet{key: "set-" + strconv.FormatUint(p.seq, 10), value: v, pools: sets.New(strings.Split(aadv1.IDKey(v), ",")...)}
		p.byValue[v], p.byKey[s.key] = s, s
	}
	s.indexed = p.seq
	return []string{s.key}
}

// containing returns the index keys of the sets that hold pool (a
// lower-cased pool ID), each with when a pod was last indexed under it.
func (p *poolSets) containing(pool string) map[string]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]uint64{}
	for key, s := range p.byKey {
		if s.pools.Has(pool) {
			out[key] = s.indexed
		}
	}
	return out
}

// forget drops a set under which no pod was found, unless a pod was indexed
// under it since indexed: that pod may not have been listed.
func (p *poolSets) forget(key string, indexed uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.byKey[key]; s != nil && s.indexed == indexed {
		delete(p.byKey, key)
		delete(p.byValue, s.value)
	}
}

// podsOf lists the cached pods that target pool (a lower-cased pool ID),
// only to be read: a pool may have thousands.
func podsOf(ctx context.Context, c client.Reader, p *poolSets, pool string) ([]corev1.Pod, error) {
	var out []corev1.Pod
	for key, indexed := range p.containing(pool) {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.MatchingFields{podPoolSetIndex: key}, client.UnsafeDisableDeepCopy); err != nil {
			return nil, fmt.Errorf("listing pods of pool set %s: %w", key, err)
		}
		switch {
		case len(pods.Items) == 0:
			p.forget(key, indexed)
		case out == nil:
			out = pods.Items // usually the only set: no copy
		default:
			out = append(out, pods.Items...)
		}
	}
	return out, nil
}
