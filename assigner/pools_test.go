package assigner

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// Rounds of one pool on a fake clock, with a fake client and ARM: the
// identity is added and recorded, pods coming on it cost no ARM read while
// the pool is settled, and once no pod needs it, it is removed after the
// grace period, not before. The entry's pods and unneededSince change in
// the same write, so the record never shows both.
func TestPoolRounds(t *testing.T) {
	const grace, drift = 5 * time.Minute, time.Hour
	ctx := context.Background()
	clk := clocktesting.NewFakeClock(t0)
	ai := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"},
		Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: uami(1), ClientID: clientIDOf(uami(1))},
	}
	tally := newPodTally()
	c := poolClient(tally, ai, testPod("p0")).
		Build()
	arm := &fakeARM{}
	r := newPoolReconciler(c, tally, nil, Options{Namespace: "sys", GCGracePeriod: grace, DriftCheckPeriod: drift, Clock: clk})
	r.arm = arm
	round := func(step string, wantRequeue time.Duration, wantGets, wantPatches int) {
		t.Helper()
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: testPool.ID()}})
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if res.RequeueAfter != wantRequeue || arm.gets != wantGets || len(arm.patches) != wantPatches {
			t.Fatalf("%s: requeue %s after %d GETs and %d PATCHes; want %s, %d, %d", step, res.RequeueAfter, arm.gets, len(arm.patches), wantRequeue, wantGets, wantPatches)
		}
	}
	record := func() (*aadv1.IdentityAssignment, error) { return entryOf(ctx, c, ai) }

	round("first pod", drift, 1, 1)
	if rec, err := record(); err != nil || rec.State != aadv1.StateAssigned || rec.Pods != 1 || rec.External {
		t.Fatalf("entry %+v, %v", rec, err)
	}

	clk.Step(time.Minute)
	if err := c.Create(ctx, testPod("p1")); err != nil {
		t.Fatal(err)
	}
	round("settled: another pod on the identity", drift-time.Minute, 1, 1)
	if rec, _ := record(); rec.Pods != 2 {
		t.Errorf("entry counts %d pods, want 2", rec.Pods)
	}

	// Within countInterval of that count: the pods of an entry needed
	// again are written with it all the same.
	clk.Step(2 * time.Second)
	for _, name := range []string{"p0", "p1"} {
		if err := c.Delete(ctx, testPod(name)); err != nil {
			t.Fatal(err)
		}
	}
	round("no pod left: the grace period starts", grace, 2, 1)
	if rec, _ := record(); rec.UnneededSince == nil || !rec.UnneededSince.Time.Equal(clk.Now()) || rec.Pods != 0 {
		t.Errorf("unneeded since %v with %d pods, want now and 0", rec.UnneededSince, rec.Pods)
	}

	clk.Step(2 * time.Second)
	if err := c.Create(ctx, testPod("p2")); err != nil {
		t.Fatal(err)
	}
	round("a pod again within the grace period", drift, 3, 1)
	if rec, _ := record(); rec.UnneededSince != nil || rec.Pods != 1 {
		t.Errorf("unneeded since %v with %d pods, want needed by 1", rec.UnneededSince, rec.Pods)
	}
	if err := c.Delete(ctx, testPod("p2")); err != nil {
		t.Fatal(err)
	}
	round("no pod left again", grace, 4, 1)

	clk.Step(grace - time.Second)
	round("within the grace period", time.Second, 5, 1)

	clk.Step(time.Second)
	round("grace period over: removed", drift, 6, 2)
	if len(arm.onPool) != 0 {
		t.Errorf("identities left on the pool: %v", arm.onPool)
	}
	var rec aadv1.AzureAssignedIdentity
	if err := c.Get(ctx, client.ObjectKey{Namespace: "sys", Name: identity.RecordName(testPool)}, &rec); !apierrors.IsNotFound(err) {
		t.Errorf("the pool's record is still there with no identity left: %v %+v", err, rec.Status)
	}
}

// entryOf reads the entry of AzureIdentity id in testPool's record.
func entryOf(ctx context.Context, c client.Reader, id *aadv1.AzureIdentity) (*aadv1.IdentityAssignment, error) {
	var rec aadv1.AzureAssignedIdentity
	if err := c.Get(ctx, client.ObjectKey{Namespace: "sys", Name: identity.RecordName(testPool)}, &rec); err != nil {
		return nil, err
	}
	if e := rec.Status.Find(id.Namespace, id.Name); e != nil {
		return e, nil
	}
	return nil, fmt.Errorf("no entry for %s/%s in %+v", id.Namespace, id.Name, rec.Status)
}

// A record is external when its identity was on the pool and no record of
// ours put it there: another AzureIdentity naming an identity the assigner
// added is not external, one the pool had before is.
func TestExternalRecords(t *testing.T) {
	ctx := context.Background()
	userAssigned := func(name, resourceID string) *aadv1.AzureIdentity {
		return &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: resourceID, ClientID: clientIDOf(resourceID)}}
	}
	a, b, pre := userAssigned("a", uami(1)), userAssigned("b", uami(1)), userAssigned("pre", uami(2))
	tally := newPodTally()
	c := poolClient(tally, a, b, pre, testPod("p0")).
		WithIndex(&aadv1.AzureAssignedIdentity{}, legacyResourceIndex, indexLegacyResource).
		Build()
	r := newPoolReconciler(c, tally, nil, Options{Namespace: "sys", GCGracePeriod: time.Minute, DriftCheckPeriod: time.Hour, Clock: clocktesting.NewFakeClock(t0)})
	r.arm = &fakeARM{onPool: map[string]bool{strings.ToLower(uami(2)): true}}
	round := func() {
		t.Helper()
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: testPool.ID()}}); err != nil {
			t.Fatal(err)
		}
	}
	round() // p0 wants a: the assigner adds uami(1)
	p1 := testPod("p1")
	p1.Annotations[aadv1.AnnotationIdentities] = "ns/b,ns/pre"
	if err := c.Create(ctx, p1); err != nil {
		t.Fatal(err)
	}
	round()
	for _, tc := range []struct {
		id       *aadv1.AzureIdentity
		external bool
	}{{a, false}, {b, false}, {pre, true}} {
		e, err := entryOf(ctx, c, tc.id)
		if err != nil {
			t.Fatal(err)
		}
		if e.External != tc.external || e.State != aadv1.StateAssigned {
			t.Errorf("entry of %s: %+v, want Assigned, external %v", tc.id.Name, e, tc.external)
		}
	}
}

// A pool needing more identities than one ARM request takes sends its
// first request, the oldest pods' identities, alone and requeues at once
// behind the pools already waiting (breadth-first over pools); the next
// round sends the rest.
func TestPoolRoundsFirstRequestAlone(t *testing.T) {
	ctx := context.Background()
	const n = 2*MaxIdentitiesPerRequest + 50
	objs := make([]client.Object, 0, 2*n)
	ids := make([]*aadv1.AzureIdentity, n)
	for i := range n {
		ids[i] = &aadv1.AzureIdentity{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("id-%03d", i)},
			Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: uami(i), ClientID: clientIDOf(uami(i))},
		}
		// The later the name, the older its pod: age, not name, decides.
		pod := testPod(fmt.Sprintf("p%03d", i))
		pod.Annotations[aadv1.AnnotationIdentities] = "ns/" + ids[i].Name
		pod.CreationTimestamp = metav1.NewTime(t0.Add(time.Duration(n-i) * time.Second))
		objs = append(objs, ids[i], pod)
	}
	tally := newPodTally()
	c := poolClient(tally, objs...).
		Build()
	arm := &fakeARM{}
	r := newPoolReconciler(c, tally, nil, Options{Namespace: "sys", GCGracePeriod: time.Minute, DriftCheckPeriod: time.Hour, Clock: clocktesting.NewFakeClock(t0)})
	r.arm = arm
	states := func() map[aadv1.AssignmentState]int {
		t.Helper()
		out := map[aadv1.AssignmentState]int{}
		for i, id := range ids {
			e, err := entryOf(ctx, c, id)
			if err != nil {
				t.Fatal(err)
			}
			// The youngest pods' identities are the ones left waiting.
			if wantWaiting := i < n-MaxIdentitiesPerRequest; e.State == aadv1.StateAssigning != wantWaiting && len(arm.patches) == 1 {
				t.Errorf("after the first request, %s is %s", id.Name, e.State)
			}
			out[e.State]++
		}
		return out
	}
	for _, want := range []struct {
		requeue time.Duration
		patches int
		states  map[aadv1.AssignmentState]int
	}{
		{time.Millisecond, 1, map[aadv1.AssignmentState]int{aadv1.StateAssigned: MaxIdentitiesPerRequest, aadv1.StateAssigning: n - MaxIdentitiesPerRequest}},
		{time.Hour, 3, map[aadv1.AssignmentState]int{aadv1.StateAssigned: n}},
	} {
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: testPool.ID()}})
		if err != nil {
			t.Fatal(err)
		}
		if got := states(); res.RequeueAfter != want.requeue || len(arm.patches) != want.patches || !maps.Equal(got, want.states) {
			t.Fatalf("requeue %s, %d PATCHes, entries %v; want %s, %d, %v", res.RequeueAfter, len(arm.patches), got, want.requeue, want.patches, want.states)
		}
	}
}

// poolClient is a fake client holding objs, with the assigner's record
// index. Its pods are counted in tally as they are written, as the pool
// controller's pod events count them.
func poolClient(tally *podTally, objs ...client.Object) *fake.ClientBuilder {
	observe := func(obj client.Object) {
		if pod, ok := obj.(*corev1.Pod); ok {
			tally.observe(pod)
		}
	}
	for _, obj := range objs {
		observe(obj)
	}
	return fake.NewClientBuilder().WithScheme(identity.Scheme()).
		WithObjects(objs...).
		WithStatusSubresource(&aadv1.AzureAssignedIdentity{}).
		WithIndex(&aadv1.AzureAssignedIdentity{}, recordPoolIndex, indexRecordPool).
		WithInterceptorFuncs(interceptor.Funcs{
			Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				observe(obj)
				return c.Create(ctx, obj, opts...)
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				observe(obj)
				return c.Update(ctx, obj, opts...)
			},
			Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
				if _, ok := obj.(*corev1.Pod); ok {
					tally.forget(client.ObjectKeyFromObject(obj))
				}
				return c.Delete(ctx, obj, opts...)
			},
		})
}

func testPod(name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: map[string]string{
		aadv1.AnnotationIdentities: "ns/a",
		aadv1.AnnotationNodePools:  testPool.ID(),
	}}}
}

// The record names its pool for kubectl get, whether the round creates it
// or finds one written before the field existed.
func TestRecordNamesItsPool(t *testing.T) {
	ctx := context.Background()
	ai := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"},
		Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: uami(1), ClientID: clientIDOf(uami(1))},
	}
	older := &aadv1.AzureAssignedIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "sys", Name: identity.RecordName(testPool)},
		Spec:       aadv1.AzureAssignedIdentitySpec{NodePool: testPool.ID()},
		Status: aadv1.AzureAssignedIdentityStatus{Assigned: 1, Identities: []aadv1.IdentityAssignment{{
			AzureIdentityRef: aadv1.IdentityReference{Namespace: "ns", Name: "a"},
			ClientID:         ai.Spec.ClientID, ResourceID: ai.Spec.ResourceID, State: aadv1.StateAssigned, Pods: 1,
		}}},
	}
	tests := []struct {
		name     string
		existing []client.Object
	}{
		{name: "new record"},
		{name: "record written before nodePoolName", existing: []client.Object{older}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tally := newPodTally()
			c := poolClient(tally, append(tc.existing, ai.DeepCopy(), testPod("p0"))...).
				Build()
			r := newPoolReconciler(c, tally, nil, Options{Namespace: "sys", GCGracePeriod: time.Minute, DriftCheckPeriod: time.Hour, Clock: clocktesting.NewFakeClock(t0)})
			r.arm = &fakeARM{onPool: map[string]bool{strings.ToLower(uami(1)): true}}
			if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: testPool.ID()}}); err != nil {
				t.Fatal(err)
			}
			var rec aadv1.AzureAssignedIdentity
			if err := c.Get(ctx, client.ObjectKeyFromObject(older), &rec); err != nil {
				t.Fatal(err)
			}
			if rec.Status.NodePoolName != testPool.Name || rec.Spec.NodePool != testPool.ID() {
				t.Errorf("record names pool %q (%s), want %q (%s)", rec.Status.NodePoolName, rec.Spec.NodePool, testPool.Name, testPool.ID())
			}
		})
	}
}
