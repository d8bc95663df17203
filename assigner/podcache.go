package assigner

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// podForAssigner is the pod cache's transform: it keeps what the assigner
// reads of a pod (name, UID, labels, our annotations, what
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
		out[intern(k)] = intern(v)
	}
	return out
}

// podTally counts, from the pod events the pool controller receives, the
// live admitted pods of each AzureIdentity on each set of pools (a
// node-pools annotation), by creation time. A round reads its pool's
// wanted identities here instead of listing the pool's pods: at 10,000
// pods every round copied 12 MB of them out of the cache, and indexing
// them by pool kept 100 keys per pod (50 pools, by namespace and for all).
// The pods the pod controller has not targeted yet are tallied apart.
type podTally struct {
	mu         sync.Mutex
	pods       map[types.NamespacedName]tallied
	sets       map[string]*poolSetTally // by node-pools annotation
	untargeted *poolSetTally
}

// tallied is what one pod adds to the tally.
type tallied struct {
	set        *poolSetTally
	identities []types.NamespacedName
	created    int64 // Unix seconds, creationTimestamp's resolution
}

// poolSetTally is the live pods of one set of pools: how many, and by
// AzureIdentity, how many were created when.
type poolSetTally struct {
	value      string
	pools      sets.Set[string] // lower-cased pool IDs
	pods       int
	identities map[types.NamespacedName]map[int64]int32
}

// podCount is how many live pods an AzureIdentity has on a pool, and when
// the oldest of them was created.
type podCount struct {
	pods   int32
	oldest time.Time
}

func newPodTally() *podTally {
	return &podTally{
		pods:       map[types.NamespacedName]tallied{},
		sets:       map[string]*poolSetTally{},
		untargeted: &poolSetTally{identities: map[types.NamespacedName]map[int64]int32{}},
	}
}

// observe counts the pod as it is now, in place of what it was.
func (t *podTally) observe(pod *corev1.Pod) {
	key := client.ObjectKeyFromObject(pod)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.remove(key)
	ids := identity.Admitted(pod)
	if !identity.Live(pod) || len(ids) == 0 {
		return
	}
	c := tallied{set: t.set(pod), identities: ids, created: pod.CreationTimestamp.Unix()}
	c.set.add(c, 1)
	t.pods[key] = c
}

// forget uncounts a deleted pod.
func (t *podTally) forget(key types.NamespacedName) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.remove(key)
}

func (t *podTally) remove(key types.NamespacedName) {
	c, ok := t.pods[key]
	if !ok {
		return
	}
	delete(t.pods, key)
	c.set.add(c, -1)
	if c.set.pods == 0 && c.set != t.untargeted {
		delete(t.sets, c.set.value)
	}
}

// set is the tally of the pod's set of pools, created if need be.
func (t *podTally) set(pod *corev1.Pod) *poolSetTally {
	v, targeted := pod.Annotations[aadv1.AnnotationNodePools]
	if !targeted {
		return t.untargeted
	}
	s := t.sets[v]
	if s == nil {
		s = &poolSetTally{value: v, identities: map[types.NamespacedName]map[int64]int32{}}
		if v != "" {
			s.pools = sets.New(strings.Split(aadv1.IDKey(v), ",")...)
		}
		t.sets[v] = s
	}
	return s
}

// add counts (n = 1) or uncounts (n = -1) a pod's identities.
func (s *poolSetTally) add(c tallied, n int32) {
	s.pods += int(n)
	for _, id := range c.identities {
		created := s.identities[id]
		if created == nil {
			created = map[int64]int32{}
			s.identities[id] = created
		}
		if created[c.created] += n; created[c.created] == 0 {
			delete(created, c.created)
		}
		if len(created) == 0 {
			delete(s.identities, id)
		}
	}
}

// wanted returns the live pods of each AzureIdentity on pool (a lower-cased
// pool ID).
func (t *podTally) wanted(pool string) map[types.NamespacedName]podCount {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[types.NamespacedName]podCount{}
	for _, s := range t.sets {
		if !s.pools.Has(pool) {
			continue
		}
		for id, created := range s.identities {
			n, seen := out[id]
			for at, pods := range created {
				if !seen || at < n.oldest.Unix() {
					n.oldest, seen = time.Unix(at, 0), true
				}
				n.pods += pods
			}
			out[id] = n
		}
	}
	return out
}

// untargetedIdentities returns the AzureIdentities of the live pods not
// targeted yet.
func (t *podTally) untargetedIdentities() []types.NamespacedName {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Collect(maps.Keys(t.untargeted.identities))
}

// targets reports whether the pod's node-pools annotation names pool (a
// lower-cased pool ID).
func targets(pod *corev1.Pod, pool string) bool {
	for id := range strings.SplitSeq(pod.Annotations[aadv1.AnnotationNodePools], ",") {
		if aadv1.SameID(id, pool) {
			return true
		}
	}
	return false
}

// indexPodIdentities indexes pods by the AzureIdentities they were admitted
// for, so that a record's change finds the pods of its changed entries.
func indexPodIdentities(o client.Object) []string {
	var keys []string
	for _, key := range identity.Admitted(o.(*corev1.Pod)) {
		keys = append(keys, key.String())
	}
	return keys
}

// recordForAssigner is the record cache's transform: managedFields go, as
// for every object, and the entries' identity strings are interned, since
// the records of the pools repeat the same identities (50 pools of 1,000
// identities: 50,000 entries naming 1,000).
func recordForAssigner(obj any) (any, error) {
	obj, err := cache.TransformStripManagedFields()(obj)
	if rec, ok := obj.(*aadv1.AzureAssignedIdentity); ok && err == nil {
		for i := range rec.Status.Identities {
			e := &rec.Status.Identities[i]
			e.AzureIdentityRef.Namespace, e.AzureIdentityRef.Name = intern(e.AzureIdentityRef.Namespace), intern(e.AzureIdentityRef.Name)
			e.ClientID, e.ResourceID, e.State = intern(e.ClientID), intern(e.ResourceID), aadv1.AssignmentState(intern(string(e.State)))
		}
	}
	return obj, err
}

// intern returns the one copy of s that the cache's objects share.
func intern(s string) string { return unique.Make(s).Value() }
