//go:build integration

package assigner_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/assigner"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

const waitFor = 30 * time.Second

// The walkthrough: one identity, one VMSS with a system-assigned identity
// and a foreign user-assigned one. The gate is lifted only once the
// identity is on the VMSS, and nothing else on it changes.
func TestWalkthroughPodGateLiftedAfterAssignment(t *testing.T) {
	w := newWorld(t)
	w.arm.SetWriteLatency(500 * time.Millisecond)
	p := w.pool("agentpool", true, nil)
	foreign := w.state.CreateIdentity(w.sub, "other", "kubelet")
	if err := w.state.SetUserAssigned(p.ID, foreign.ResourceID, true); err != nil {
		t.Fatal(err)
	}
	before, _ := w.state.Pool(p.ID)
	id := w.identity("demo")
	w.pod("demo", "demo")

	// While the write runs, the pod stays gated.
	framework.Eventually(t, waitFor, "a PATCH in flight", func() error {
		if len(w.arm.Writes()) == 0 {
			return fmt.Errorf("no PATCH yet")
		}
		return nil
	})
	if pod := w.getPod("demo"); !gated(pod) && !w.state.Assigned(p.ID, id.ClientID) {
		t.Fatal("gate lifted before the identity reached the VMSS")
	}
	pod := w.waitAssigned("demo", waitFor)
	if !w.state.Assigned(p.ID, id.ClientID) {
		t.Fatal("gate lifted but identity not on the VMSS")
	}
	after, _ := w.state.Pool(p.ID)
	if after.SystemAssigned != before.SystemAssigned || !w.state.Assigned(p.ID, foreign.ClientID) {
		t.Errorf("system-assigned (%q → %q) or foreign identity lost", before.SystemAssigned, after.SystemAssigned)
	}
	if got := pod.Annotations[aadv1.AnnotationNodePools]; !strings.EqualFold(got, p.ID) {
		t.Errorf("node-pools = %q, want %q", got, p.ID)
	}
	if at, err := time.Parse(time.RFC3339, pod.Annotations[aadv1.AnnotationIdentitiesReadyAt]); err != nil || at.Before(pod.CreationTimestamp.Time) {
		t.Errorf("%s = %q (%v), want when the gate was lifted", aadv1.AnnotationIdentitiesReadyAt, pod.Annotations[aadv1.AnnotationIdentitiesReadyAt], err)
	}
	rec, err := w.record("demo", p)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != aadv1.StateAssigned || rec.External || rec.Pods != 1 {
		t.Errorf("entry = %+v", rec)
	}
	if writes := w.arm.Writes(); len(writes) != 1 || writes[0].Type != fakeazure.TypeSystemAssignedUserAssigned || len(writes[0].Body) != 1 {
		t.Errorf("writes = %+v, want one delta PATCH keeping SystemAssigned", writes)
	}
	framework.Eventually(t, waitFor, "the pool's assignment event", func() error {
		var events corev1.EventList
		if err := w.c.List(w.ctx, &events, client.InNamespace(w.recordNS)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.InvolvedObject.Kind == "AzureAssignedIdentity" && e.Reason == assigner.EventPoolAssigned && e.Type == corev1.EventTypeNormal &&
				strings.Contains(e.Message, w.ns+"/demo") {
				return nil
			}
		}
		return fmt.Errorf("no %s event among %d", assigner.EventPoolAssigned, len(events.Items))
	})
}

// Once an identity is in place, more pods using it are admitted without
// reading the pool again (ARM reads are throttled per subscription), and
// the record still counts them.
func TestSettledPoolIsNotRead(t *testing.T) {
	w := newWorld(t)
	p := w.pool("agentpool", false, nil)
	w.identity("demo")
	w.pod("first", "demo")
	w.waitAssigned("first", waitFor)
	reads := w.arm.Calls()["GET virtualMachineScaleSets"]
	for i := range 5 {
		w.pod(fmt.Sprintf("more-%d", i), "demo")
	}
	for i := range 5 {
		w.waitAssigned(fmt.Sprintf("more-%d", i), waitFor)
	}
	framework.Eventually(t, waitFor, "the record listing every pod", func() error {
		rec, err := w.record("demo", p)
		if err != nil {
			return err
		}
		if rec.Pods != 6 {
			return fmt.Errorf("entry counts %d pods, want 6", rec.Pods)
		}
		return nil
	})
	if got := w.arm.Calls()["GET virtualMachineScaleSets"]; got != reads {
		t.Errorf("pool read %d more times for pods on an identity already assigned", got-reads)
	}
}

// A burst of pods becomes at most two PATCHes per pool.
func TestBurstBatchesPerPool(t *testing.T) {
	w := newWorld(t)
	w.arm.SetWriteLatency(time.Second)
	pools := []fakeazure.Pool{w.pool("p0", false, nil), w.pool("p1", true, nil), w.pool("p2", false, nil)}
	var ids []fakeazure.Identity
	for i := range 10 {
		ids = append(ids, w.identity(fmt.Sprintf("id%d", i)))
	}
	for i := range 100 {
		w.pod(fmt.Sprintf("pod%d", i), fmt.Sprintf("id%d", i%10))
	}
	for i := range 100 {
		w.waitAssigned(fmt.Sprintf("pod%d", i), time.Minute)
	}
	for _, p := range pools {
		for _, id := range ids {
			if !w.state.Assigned(p.ID, id.ClientID) {
				t.Errorf("%s not on %s", id.Name, p.Name)
			}
		}
		if n := w.patches()[strings.ToLower(p.ID)]; n < 1 || n > 2 {
			t.Errorf("pool %s got %d PATCHes, want 1 or 2", p.Name, n)
		}
	}
	if n := len(w.records()); n != 30 {
		t.Errorf("%d records, want 30", n)
	}
}

// Pools are chosen by node selector and taints; no matching pool fails
// the pod, still gated, until a node appears.
func TestTargetsAndNoMatchingPool(t *testing.T) {
	w := newWorld(t)
	a := w.pool("a", false, nil)
	b := w.pool("b", false, map[string]string{"gpu": "true"}, corev1.Taint{Key: "gpu", Effect: corev1.TaintEffectNoSchedule})
	id := w.identity("x")
	w.pod("plain", "x")
	w.pod("gpu", "x", func(p *corev1.Pod) {
		p.Spec.NodeSelector = map[string]string{"gpu": "true"}
		p.Spec.Tolerations = []corev1.Toleration{{Key: "gpu", Operator: corev1.TolerationOpExists}}
	})
	w.pod("nowhere", "x", func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"zone": "z9"} })
	w.waitAssigned("plain", waitFor)
	w.waitAssigned("gpu", waitFor)
	if !w.state.Assigned(a.ID, id.ClientID) || !w.state.Assigned(b.ID, id.ClientID) {
		t.Error("identity missing on a or b")
	}
	if got := w.getPod("plain").Annotations[aadv1.AnnotationNodePools]; !strings.EqualFold(got, a.ID) {
		t.Errorf("plain pod targets %q", got)
	}
	framework.Eventually(t, waitFor, "the no-pool failure on the pod", func() error {
		pod := w.getPod("nowhere")
		if a := pod.Annotations[aadv1.AnnotationAssignment]; !strings.HasPrefix(a, aadv1.AssignmentFailedPrefix+"no node pool matches") || !gated(pod) {
			return fmt.Errorf("assignment %q gated %v", a, gated(pod))
		}
		return nil
	})
	c := w.pool("c", false, map[string]string{"zone": "z9"})
	w.waitAssigned("nowhere", waitFor)
	if !w.state.Assigned(c.ID, id.ClientID) {
		t.Error("identity missing on the new pool")
	}
}

// An identity no pod needs is removed after the grace period, not before;
// external identities are never removed.
func TestGCAfterGracePeriod(t *testing.T) {
	const grace = 2 * time.Second
	w := newWorld(t, func(o *assigner.Options) { o.GCGracePeriod = grace })
	p := w.pool("p", true, nil)
	owned := w.identity("owned")
	external := w.identity("external")
	if err := w.state.SetUserAssigned(p.ID, external.ResourceID, true); err != nil {
		t.Fatal(err)
	}
	w.pod("a", "owned")
	w.pod("b", "external")
	w.waitAssigned("a", waitFor)
	w.waitAssigned("b", waitFor)
	if rec, err := w.record("external", p); err != nil || !rec.External {
		t.Fatalf("external record = %+v, %v", rec, err)
	}
	deleted := time.Now()
	for _, name := range []string{"a", "b"} {
		if err := w.c.Delete(w.ctx, w.getPod(name)); err != nil {
			t.Fatal(err)
		}
	}
	var since time.Time
	framework.Eventually(t, waitFor, "the record marked unneeded", func() error {
		rec, err := w.record("owned", p)
		if err != nil {
			return err
		}
		if rec.UnneededSince == nil {
			return fmt.Errorf("entry %+v not marked unneeded", rec)
		}
		since = rec.UnneededSince.Time
		return nil
	})
	if time.Since(deleted) < grace && !w.state.Assigned(p.ID, owned.ClientID) {
		t.Fatal("identity removed before the grace period")
	}
	framework.Eventually(t, waitFor, "the owned identity removed", func() error {
		if w.state.Assigned(p.ID, owned.ClientID) {
			return fmt.Errorf("owned identity still on the pool")
		}
		if _, err := w.record("owned", p); err == nil {
			return fmt.Errorf("entry of the removed identity still exists")
		}
		return nil
	})
	for _, wr := range w.arm.Writes() {
		if removed, ok := wr.Body[owned.ResourceID]; ok && !removed && wr.At.Before(since.Add(grace)) {
			t.Errorf("removal sent at %s, grace period ends %s", wr.At, since.Add(grace))
		}
	}
	if !w.state.Assigned(p.ID, external.ClientID) {
		t.Error("external identity removed")
	}
	if got, _ := w.state.Pool(p.ID); got.SystemAssigned == "" {
		t.Error("system-assigned identity lost")
	}
}

// An identity that vanishes from a pool is put back.
func TestDriftRepaired(t *testing.T) {
	w := newWorld(t, func(o *assigner.Options) { o.DriftCheckPeriod = time.Second })
	p := w.pool("p", false, nil)
	id := w.identity("x")
	w.pod("a", "x")
	w.waitAssigned("a", waitFor)
	if err := w.state.SetUserAssigned(p.ID, id.ResourceID, false); err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, waitFor, "the drifted identity re-added", func() error {
		if !w.state.Assigned(p.ID, id.ClientID) {
			return fmt.Errorf("identity not re-added")
		}
		return nil
	})
}

// A binding created after the pod adds its identity; deleting it removes
// the identity from the pod's annotations (and, after grace, the pool).
func TestLateAndDeletedBinding(t *testing.T) {
	w := newWorld(t, func(o *assigner.Options) { o.GCGracePeriod = time.Second })
	p := w.pool("p", false, nil)
	node := w.ns + "-p"
	w.pod("late", "late", func(pod *corev1.Pod) { pod.Spec.NodeName = node })
	if got := w.getPod("late").Annotations[aadv1.AnnotationIdentities]; got != "" {
		t.Fatalf("identities = %q before the binding exists", got)
	}
	id := w.identity("late")
	framework.Eventually(t, waitFor, "the late binding's annotations", func() error {
		pod := w.getPod("late")
		if pod.Annotations[aadv1.AnnotationIdentities] != w.ns+"/late" || pod.Annotations[aadv1.AnnotationClientIDs] != id.ClientID {
			return fmt.Errorf("annotations %v", pod.Annotations)
		}
		if pod.Annotations[aadv1.AnnotationAssignment] != aadv1.AssignmentAssigned || !w.state.Assigned(p.ID, id.ClientID) {
			return fmt.Errorf("not assigned: %q", pod.Annotations[aadv1.AnnotationAssignment])
		}
		return nil
	})
	var b aadv1.AzureIdentityBinding
	if err := w.c.Get(w.ctx, client.ObjectKey{Namespace: w.ns, Name: "late"}, &b); err != nil {
		t.Fatal(err)
	}
	if err := w.c.Delete(w.ctx, &b); err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, waitFor, "the deleted binding's annotations cleared", func() error {
		if got := w.getPod("late").Annotations[aadv1.AnnotationIdentities]; got != "" {
			return fmt.Errorf("identities still %q", got)
		}
		if w.state.Assigned(p.ID, id.ClientID) {
			return fmt.Errorf("identity still on the pool")
		}
		return nil
	})
}

// ARM faults: 429 pauses writes for Retry-After; 500 and 409 back off and
// succeed; an identity ARM refuses fails alone.
func TestFaults(t *testing.T) {
	tests := []struct {
		name   string
		inject func(w *world, p fakeazure.Pool)
		check  func(t *testing.T, w *world)
	}{
		{
			name: "429 honours Retry-After",
			inject: func(w *world, p fakeazure.Pool) {
				w.arm.InjectFault(fakeazure.Fault{Method: http.MethodPatch, Status: 429, RetryAfter: "2"})
			},
			check: func(t *testing.T, w *world) {
				writes := w.arm.Writes()
				if len(writes) < 2 || writes[0].Status != 429 {
					t.Fatalf("writes = %+v", writes)
				}
				if gap := writes[1].At.Sub(writes[0].At); gap < 2*time.Second {
					t.Errorf("wrote again %s after a 429 asking for 2s", gap)
				}
			},
		},
		{
			name: "429 with HTTP date",
			inject: func(w *world, p fakeazure.Pool) {
				w.arm.InjectFault(fakeazure.Fault{Method: http.MethodGet, Status: 429, RetryAfter: time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat)})
			},
			check: func(t *testing.T, w *world) {
				if c := w.arm.Calls(); c["GET virtualMachineScaleSets"] < 2 {
					t.Errorf("calls = %v", c)
				}
			},
		},
		{
			name: "500 retried",
			inject: func(w *world, p fakeazure.Pool) {
				w.arm.InjectFault(fakeazure.Fault{Method: http.MethodPatch, Status: 500})
			},
			check: func(t *testing.T, w *world) {
				if writes := w.arm.Writes(); len(writes) < 2 || writes[0].Status != 500 {
					t.Errorf("writes = %+v", writes)
				}
			},
		},
		{
			name:   "409 while another write runs",
			inject: func(w *world, p fakeazure.Pool) { w.arm.Busy(p.ID, time.Second) },
			check: func(t *testing.T, w *world) {
				if writes := w.arm.Writes(); len(writes) < 2 || writes[0].Status != 409 {
					t.Errorf("writes = %+v", writes)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			p := w.pool("p", false, nil)
			id := w.identity("x")
			tc.inject(w, p)
			w.pod("a", "x")
			w.waitAssigned("a", waitFor)
			if !w.state.Assigned(p.ID, id.ClientID) {
				t.Fatal("identity not assigned")
			}
			tc.check(t, w)
		})
	}

	t.Run("400 isolates the bad identity", func(t *testing.T) {
		w := newWorld(t)
		p := w.pool("p", false, nil)
		good := w.identity("good")
		w.azureIdentity("bad", "/subscriptions/"+w.sub+"/resourceGroups/ids-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/deleted", "00000000-0000-0000-0000-0000000000ba")
		w.binding("bad", "bad", "bad")
		w.binding("both-good", "good", "both")
		w.binding("both-bad", "bad", "both")
		w.pod("good", "good")
		w.pod("both", "both")
		w.waitAssigned("good", waitFor)
		if !w.state.Assigned(p.ID, good.ClientID) {
			t.Fatal("good identity not assigned")
		}
		framework.Eventually(t, waitFor, "the refused identity's failure on the pod", func() error {
			pod := w.getPod("both")
			if a := pod.Annotations[aadv1.AnnotationAssignment]; !strings.HasPrefix(a, aadv1.AssignmentFailedPrefix) || !strings.Contains(a, identity.ReasonAssignmentFailed) || !gated(pod) {
				return fmt.Errorf("assignment %q gated %v", a, gated(pod))
			}
			return nil
		})
		// ARM's answer is the record's, not the pod's.
		if a := w.getPod("both").Annotations[aadv1.AnnotationAssignment]; strings.Contains(a, "FailedIdentityOperation") {
			t.Errorf("the pod's assignment carries ARM's answer: %q", a)
		}
		rec, err := w.record("bad", p)
		if err != nil || rec.State != aadv1.StateFailed || !strings.Contains(rec.LastError, "FailedIdentityOperation") {
			t.Errorf("bad entry = %+v, %v", rec, err)
		}
	})
}

// Killing the assigner mid-burst loses nothing: a new one converges.
func TestRestartMidBurstConverges(t *testing.T) {
	w := newWorld(t)
	w.arm.SetWriteLatency(time.Second)
	pools := []fakeazure.Pool{w.pool("p0", false, nil), w.pool("p1", true, nil)}
	for i := range 5 {
		w.identity(fmt.Sprintf("id%d", i))
	}
	for i := range 30 {
		w.pod(fmt.Sprintf("pod%d", i), fmt.Sprintf("id%d", i%5))
	}
	framework.Eventually(t, waitFor, "a PATCH in flight", func() error {
		if len(w.arm.Writes()) == 0 {
			return fmt.Errorf("no PATCH yet")
		}
		return nil
	})
	w.stop() // mid-PATCH: ARM finishes the write without us
	w.start()
	for i := range 30 {
		w.waitAssigned(fmt.Sprintf("pod%d", i), time.Minute)
	}
	for _, rec := range w.records() {
		if rec.State != aadv1.StateAssigned || rec.External {
			t.Errorf("entry %+v", rec)
		}
	}
	if n := len(w.records()); n != 10 {
		t.Errorf("%d records, want 10", n)
	}
	for _, p := range pools {
		if got, _ := w.state.Pool(p.ID); len(got.UserAssigned) != 5 {
			t.Errorf("pool %s has %d identities", p.Name, len(got.UserAssigned))
		}
	}
}

// An AzureIdentity edited after assignment is re-paired: a corrected
// client ID in place, and another resource by releasing the old one at
// once (the grace period is an hour here) and assigning the new one.
func TestEditedIdentityRePaired(t *testing.T) {
	w := newWorld(t)
	p := w.pool("p", false, nil)
	x, y := w.state.CreateIdentity(w.sub, "ids-rg", "x"), w.state.CreateIdentity(w.sub, "ids-rg", "y")
	w.azureIdentity("edited", x.ResourceID, y.ClientID) // a client ID that does not belong to x
	w.binding("edited", "edited", "edited")
	w.pod("a", "edited")
	framework.Eventually(t, waitFor, "the mismatched pairing refused", func() error {
		rec, err := w.record("edited", p)
		if err != nil {
			return err
		}
		if rec.State != aadv1.StateFailed {
			return fmt.Errorf("entry %+v, want Failed", rec)
		}
		return nil
	})
	if !gated(w.getPod("a")) {
		t.Fatal("gate lifted for a pairing ARM refuses")
	}

	edit := func(resourceID, clientID string) {
		t.Helper()
		var ai aadv1.AzureIdentity
		if err := w.c.Get(w.ctx, client.ObjectKey{Namespace: w.ns, Name: "edited"}, &ai); err != nil {
			t.Fatal(err)
		}
		ai.Spec.ResourceID, ai.Spec.ClientID = resourceID, clientID
		if err := w.c.Update(w.ctx, &ai); err != nil {
			t.Fatal(err)
		}
	}
	paired := func(want fakeazure.Identity) func() error {
		return func() error {
			rec, err := w.record("edited", p)
			if err != nil {
				return err
			}
			if !strings.EqualFold(rec.ResourceID, want.ResourceID) || rec.ClientID != want.ClientID ||
				rec.State != aadv1.StateAssigned || rec.External {
				return fmt.Errorf("entry %+v, want %s Assigned", rec, want.ClientID)
			}
			if a := w.getPod("a").Annotations[aadv1.AnnotationAssignment]; a != aadv1.AssignmentAssigned {
				return fmt.Errorf("pod assignment %q", a)
			}
			return nil
		}
	}

	edit(x.ResourceID, x.ClientID)
	framework.Eventually(t, waitFor, "the corrected client ID re-paired in place", paired(x))
	w.waitAssigned("a", waitFor)

	edit(y.ResourceID, y.ClientID)
	framework.Eventually(t, waitFor, "the new resource assigned", paired(y))
	if !w.state.Assigned(p.ID, y.ClientID) {
		t.Error("the new identity is not on the pool")
	}
	if w.state.Assigned(p.ID, x.ClientID) {
		t.Error("the identity the AzureIdentity no longer names is still on the pool")
	}
}

// aad-pod-identity 1.x's MIC put an identity on the pool for a running pod
// and recorded it per pod: the assigner serves it (not external) but never
// removes it (preexisting), and deletes 1.x's record. An identity on the
// pool without such a record, or with one written since the installation
// (forged by whoever may write AzureAssignedIdentities), stays external. A
// labelled pod the webhook neither admitted nor adopted is left alone.
func TestAdoptsWhat1xAssigned(t *testing.T) {
	const grace = 2 * time.Second
	w := newWorld(t, func(o *assigner.Options) { o.GCGracePeriod = grace })
	p := w.pool("p", false, nil)
	node := w.ns + "-p"
	mic, admin := w.identity("mic"), w.identity("admin")
	for _, id := range []fakeazure.Identity{mic, admin} {
		if err := w.state.SetUserAssigned(p.ID, id.ResourceID, true); err != nil {
			t.Fatal(err)
		}
	}
	// 1.x's world is in place before the assigner starts, as at an upgrade.
	w.stop()
	// Running since 1.x: no annotations until the webhook adopts them.
	for name, selector := range map[string]string{"a": "mic", "b": "admin"} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name, Labels: map[string]string{aadv1.BindingLabel: selector}},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "demo"}}}}
		if err := w.c.Create(w.ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	// MIC's record that it put identity on node's pool for pod.
	record1x := func(pod, identity, resourceID string) *aadv1.AzureAssignedIdentity {
		rec := &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: pod + "-" + w.ns + "-" + identity},
			Spec: aadv1.AzureAssignedIdentitySpec{LegacyRecordSpec: aadv1.LegacyRecordSpec{
				LegacyIdentityRef: &aadv1.LegacyIdentityReference{Metadata: &aadv1.LegacyObjectMeta{Namespace: w.ns, Name: identity},
					Spec: &aadv1.LegacyIdentitySpec{ResourceID: resourceID}},
				LegacyPod: pod, LegacyPodNamespace: w.ns, LegacyNodeName: node,
			}}}
		if err := w.c.Create(w.ctx, rec); err != nil {
			t.Fatal(err)
		}
		rec.Status = aadv1.AzureAssignedIdentityStatus{LegacyRecordStatus: aadv1.LegacyRecordStatus{LegacyStatus: aadv1.StateAssigned}}
		if err := w.c.Status().Update(w.ctx, rec); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	legacy := record1x("a", "mic", mic.ResourceID)
	time.Sleep(time.Second) // creation times are whole seconds
	w.opts.LegacyEvidenceBefore = time.Now()
	time.Sleep(time.Second)
	// Written after the installation, as MIC's would be for pod b.
	record1x("b", "admin", admin.ResourceID)
	w.start()
	time.Sleep(time.Second)
	if got := w.getPod("a").Annotations; got[aadv1.AnnotationAssignment] != "" || len(w.records()) != 0 {
		t.Fatalf("a pod not admitted was handled: annotations %v, %d records", got, len(w.records()))
	}
	if err := w.c.Get(w.ctx, client.ObjectKeyFromObject(legacy), &aadv1.AzureAssignedIdentity{}); err != nil {
		t.Fatalf("1.x's record, still needed as evidence: %v", err)
	}
	for _, name := range []string{"a", "b"} {
		pod := w.getPod(name)
		orig := pod.DeepCopy()
		pod.Annotations = map[string]string{aadv1.AnnotationIdentities: w.ns + "/" + pod.Labels[aadv1.BindingLabel]}
		if err := w.c.Patch(w.ctx, pod, client.MergeFrom(orig)); err != nil {
			t.Fatal(err)
		}
		w.waitAssigned(name, waitFor)
	}
	if rec, err := w.record("mic", p); err != nil || rec.External || !rec.Preexisting || rec.AdoptedFrom != w.ns+"/"+legacy.Name {
		t.Fatalf("record of 1.x's identity = %+v, %v; want it served and preexisting, adopted from %s", rec, err, legacy.Name)
	}
	if rec, err := w.record("admin", p); err != nil || !rec.External || rec.AdoptedFrom != "" {
		t.Fatalf("record of the admin's identity = %+v, %v; want it external despite the forged record", rec, err)
	}
	framework.Eventually(t, waitFor, "1.x's record deleted", func() error {
		err := w.c.Get(w.ctx, client.ObjectKeyFromObject(legacy), &aadv1.AzureAssignedIdentity{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (get: %w)", err)
		}
		return nil
	})
	for _, name := range []string{"a", "b"} {
		// No kubelet here to finish a graceful deletion of a bound pod.
		if err := w.c.Delete(w.ctx, w.getPod(name), client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
	}
	framework.Eventually(t, waitFor, "entries dropped once unneeded", func() error {
		if n := len(w.records()); n != 0 {
			return fmt.Errorf("%d records left", n)
		}
		return nil
	})
	for name, id := range map[string]fakeazure.Identity{"1.x's": mic, "the admin's": admin} {
		if !w.state.Assigned(p.ID, id.ClientID) {
			t.Errorf("%s identity was removed from the pool", name)
		}
	}
}

// The assigner before one record per pool (0.1) wrote one record per
// identity and pool. At an upgrade, such a record is taken over: its
// identity stays ours (not external) and keeps its state, the pool's
// record gets its entry, and the old record is deleted. One that said
// external stays external.
func TestTakesOverOneIdentityRecords(t *testing.T) {
	w := newWorld(t)
	p := w.pool("p", false, nil)
	owned, foreign := w.identity("owned"), w.identity("foreign")
	for _, id := range []fakeazure.Identity{owned, foreign} {
		if err := w.state.SetUserAssigned(p.ID, id.ResourceID, true); err != nil {
			t.Fatal(err)
		}
	}
	w.stop()
	var old []*aadv1.AzureAssignedIdentity
	for _, tc := range []struct {
		id       fakeazure.Identity
		name     string
		external bool
	}{{owned, "owned", false}, {foreign, "foreign", true}} {
		rec := &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: w.recordNS, Name: w.ns + "-" + tc.name + "-0123456789ab"},
			Spec: aadv1.AzureAssignedIdentitySpec{NodePool: p.ID, LegacyRecordSpec: aadv1.LegacyRecordSpec{
				LegacyIdentityRef: &aadv1.LegacyIdentityReference{Namespace: w.ns, Name: tc.name},
				LegacyClientID:    tc.id.ClientID, LegacyResourceID: tc.id.ResourceID}}}
		if err := w.c.Create(w.ctx, rec); err != nil {
			t.Fatal(err)
		}
		rec.Status = aadv1.AzureAssignedIdentityStatus{LegacyRecordStatus: aadv1.LegacyRecordStatus{LegacyStatus: aadv1.StateAssigned, LegacyExternal: tc.external}}
		if err := w.c.Status().Update(w.ctx, rec); err != nil {
			t.Fatal(err)
		}
		old = append(old, rec)
	}
	w.start()
	w.pod("a", "owned")
	w.pod("b", "foreign")
	w.waitAssigned("a", waitFor)
	w.waitAssigned("b", waitFor)
	if e, err := w.record("owned", p); err != nil || e.External || e.State != aadv1.StateAssigned || e.AdoptedFrom != w.recordNS+"/"+old[0].Name {
		t.Errorf("entry of the owned identity = %+v, %v; want Assigned, ours, taken over from %s", e, err, old[0].Name)
	}
	if e, err := w.record("foreign", p); err != nil || !e.External {
		t.Errorf("entry of the external identity = %+v, %v; want it external still", e, err)
	}
	framework.Eventually(t, waitFor, "the one-identity records deleted", func() error {
		for _, rec := range old {
			if err := w.c.Get(w.ctx, client.ObjectKeyFromObject(rec), &aadv1.AzureAssignedIdentity{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%s still there (get: %w)", rec.Name, err)
			}
		}
		return nil
	})
	if writes := w.arm.Writes(); len(writes) != 0 {
		t.Errorf("ARM writes %+v; both identities were in place", writes)
	}
}

// An identity turned federated (the AzureIdentity annotated) while its pod
// runs: new pods of it are released without an ARM write, and the identity
// leaves the pool after the grace period, as when no pod needs it.
func TestIdentityTurnedFederatedLeavesThePool(t *testing.T) {
	const grace = 2 * time.Second
	w := newWorld(t, func(o *assigner.Options) { o.GCGracePeriod = grace })
	p := w.pool("p", true, nil)
	moving := w.identity("moving")
	w.pod("a", "moving")
	w.waitAssigned("a", waitFor)
	if !w.state.Assigned(p.ID, moving.ClientID) {
		t.Fatal("identity not on the pool")
	}

	var ai aadv1.AzureIdentity
	if err := w.c.Get(w.ctx, client.ObjectKey{Namespace: w.ns, Name: "moving"}, &ai); err != nil {
		t.Fatal(err)
	}
	ai.Annotations = map[string]string{aadv1.AnnotationFederated: "true"}
	if err := w.c.Update(w.ctx, &ai); err != nil {
		t.Fatal(err)
	}
	writes := len(w.arm.Writes())
	// Admitted as the webhook would now: federated, so not gated.
	w.pod("b", "moving")
	if pod := w.waitAssigned("b", waitFor); pod.Annotations[aadv1.AnnotationNodePools] != "" {
		t.Errorf("pod b targets pools %q for a federated identity", pod.Annotations[aadv1.AnnotationNodePools])
	}
	framework.Eventually(t, waitFor, "the federated identity off the pool", func() error {
		if w.state.Assigned(p.ID, moving.ClientID) {
			return fmt.Errorf("still on the pool")
		}
		return nil
	})
	for _, wr := range w.arm.Writes()[writes:] {
		if added, ok := wr.Body[moving.ResourceID]; ok && added {
			t.Errorf("the federated identity was written to the pool again: %+v", wr)
		}
	}
	if a := w.getPod("a").Annotations[aadv1.AnnotationAssignment]; a != aadv1.AssignmentAssigned {
		t.Errorf("running pod a's assignment became %q", a)
	}
}
