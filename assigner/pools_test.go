package assigner

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// Rounds of one pool on a fake clock, with a fake client and ARM: the
// identity is added and recorded, pods coming on it cost no ARM read while
// the pool is settled, and once no pod needs it, it is removed after the
// grace period, not before.
func TestPoolRounds(t *testing.T) {
	const grace, drift = 5 * time.Minute, time.Hour
	ctx := context.Background()
	clk := clocktesting.NewFakeClock(t0)
	ai := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"},
		Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: uami(1), ClientID: clientIDOf(uami(1))},
	}
	c := fake.NewClientBuilder().WithScheme(identity.Scheme()).
		WithObjects(ai, testPod("p0")).
		WithStatusSubresource(&aadv1.AzureAssignedIdentity{}).
		WithIndex(&corev1.Pod{}, podPoolIndex, indexPodPools).
		WithIndex(&aadv1.AzureAssignedIdentity{}, recordPoolIndex, indexRecordPool).
		Build()
	arm := &fakeARM{}
	r := newPoolReconciler(c, Options{Namespace: "sys", GCGracePeriod: grace, DriftCheckPeriod: drift, Clock: clk})
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
	record := func() (*aadv1.AzureAssignedIdentity, error) {
		var rec aadv1.AzureAssignedIdentity
		err := c.Get(ctx, client.ObjectKey{Namespace: "sys", Name: identity.AssignmentName(client.ObjectKeyFromObject(ai), testPool)}, &rec)
		return &rec, err
	}

	round("first pod", drift, 1, 1)
	if rec, err := record(); err != nil || rec.Status.Status != aadv1.StateAssigned || rec.Status.Pods != 1 || rec.Status.External {
		t.Fatalf("record %+v, %v", rec.Status, err)
	}

	clk.Step(time.Minute)
	if err := c.Create(ctx, testPod("p1")); err != nil {
		t.Fatal(err)
	}
	round("settled: another pod on the identity", drift-time.Minute, 1, 1)
	if rec, _ := record(); rec.Status.Pods != 2 {
		t.Errorf("record counts %d pods, want 2", rec.Status.Pods)
	}

	clk.Step(time.Minute)
	for _, name := range []string{"p0", "p1"} {
		if err := c.Delete(ctx, testPod(name)); err != nil {
			t.Fatal(err)
		}
	}
	round("no pod left: the grace period starts", grace, 2, 1)
	if rec, _ := record(); rec.Annotations[annotationUnneededSince] != clk.Now().UTC().Format(time.RFC3339Nano) {
		t.Errorf("unneeded since %q, want now", rec.Annotations[annotationUnneededSince])
	}

	clk.Step(grace - time.Second)
	round("within the grace period", time.Second, 3, 1)

	clk.Step(time.Second)
	round("grace period over: removed", drift, 4, 2)
	if len(arm.onPool) != 0 {
		t.Errorf("identities left on the pool: %v", arm.onPool)
	}
	if _, err := record(); err == nil {
		t.Error("record of the removed identity still exists")
	}
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
	c := fake.NewClientBuilder().WithScheme(identity.Scheme()).
		WithObjects(a, b, pre, testPod("p0")).
		WithStatusSubresource(&aadv1.AzureAssignedIdentity{}).
		WithIndex(&corev1.Pod{}, podPoolIndex, indexPodPools).
		WithIndex(&aadv1.AzureAssignedIdentity{}, recordPoolIndex, indexRecordPool).
		WithIndex(&aadv1.AzureAssignedIdentity{}, legacyResourceIndex, indexLegacyResource).
		Build()
	r := newPoolReconciler(c, Options{Namespace: "sys", GCGracePeriod: time.Minute, DriftCheckPeriod: time.Hour, Clock: clocktesting.NewFakeClock(t0)})
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
		var rec aadv1.AzureAssignedIdentity
		if err := c.Get(ctx, client.ObjectKey{Namespace: "sys", Name: identity.AssignmentName(client.ObjectKeyFromObject(tc.id), testPool)}, &rec); err != nil {
			t.Fatalf("record of %s: %v", tc.id.Name, err)
		}
		if rec.Status.External != tc.external || rec.Status.Status != aadv1.StateAssigned {
			t.Errorf("record of %s: %+v, want Assigned, external %v", tc.id.Name, rec.Status, tc.external)
		}
	}
}

func testPod(name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: map[string]string{
		aadv1.AnnotationIdentities: "ns/a",
		aadv1.AnnotationNodePools:  testPool.ID(),
	}}}
}
