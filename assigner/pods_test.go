package assigner

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// ARM's answer in a Failed entry can name another identity's client ID and
// the assigner's principal and scopes. The pod's event and annotation, which
// namespace users read, carry a stable reason and the AzureIdentity; the
// record keeps ARM's text.
func TestFailedAssignmentKeepsARMTextFromThePod(t *testing.T) {
	const (
		foreignClientID = "5e1ec7ed-0000-4000-8000-00000000f00d"
		principal       = "9a551e00-0000-4000-8000-0000000000aa"
		scope           = "/subscriptions/s/resourceGroups/other-team"
	)
	pool, err := nodepool.ParseID("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachineScaleSets/pool")
	if err != nil {
		t.Fatal(err)
	}
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "mine"},
		Spec: aadv1.AzureIdentitySpec{ClientID: "client-a", ResourceID: "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mine"}}
	armText := `ARM reports client ID "` + foreignClientID + `" for identity ` + id.Spec.ResourceID + `; ARM 403 AuthorizationFailed: The client '` + principal +
		`' does not have authorization to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' over scope '` + scope + `'`
	record := &aadv1.AzureAssignedIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "sys", Name: identity.RecordName(pool)},
		Spec:       aadv1.AzureAssignedIdentitySpec{NodePool: pool.ID()},
		Status: aadv1.AzureAssignedIdentityStatus{Identities: []aadv1.IdentityAssignment{{
			AzureIdentityRef: aadv1.IdentityReference{Namespace: "ns", Name: "mine"},
			ClientID:         id.Spec.ClientID, ResourceID: id.Spec.ResourceID, State: aadv1.StateFailed, LastError: armText,
		}}},
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a",
			Labels:      map[string]string{aadv1.BindingLabel: "sel"},
			Annotations: map[string]string{aadv1.AnnotationIdentities: "ns/mine"}},
		Spec: corev1.PodSpec{NodeName: "n"},
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{corev1.LabelOSStable: "linux"}}, Spec: corev1.NodeSpec{ProviderID: "azure://" + pool.ID() + "/virtualMachines/0"}}
	bind := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "bind"}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "mine", Selector: "sel"}}
	c := fake.NewClientBuilder().WithScheme(identity.Scheme()).WithObjects(id, bind, pod, node, record).
		WithIndex(&aadv1.AzureIdentityBinding{}, identity.BindingSelectorIndex, identity.IndexBindingSelector).Build()
	recorder := events.NewFakeRecorder(10)
	r := &podReconciler{client: c, resolver: &identity.Resolver{Cache: c}, recorder: recorder, namespace: "sys", nmi: nodepool.Default()}

	if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: client.ObjectKeyFromObject(pod)}); err != nil {
		t.Fatal(err)
	}
	var got corev1.Pod
	if err := c.Get(t.Context(), client.ObjectKeyFromObject(pod), &got); err != nil {
		t.Fatal(err)
	}
	var event string
	select {
	case event = <-recorder.Events:
	default:
		t.Fatalf("no event on the pod (annotations %v)", got.Annotations)
	}
	for what, text := range map[string]string{"event": event, "assignment annotation": got.Annotations[aadv1.AnnotationAssignment]} {
		if !strings.Contains(text, identity.ReasonAssignmentFailed) || !strings.Contains(text, "ns/mine") {
			t.Errorf("%s %q names no stable reason and AzureIdentity", what, text)
		}
		for _, secret := range []string{foreignClientID, principal, scope, "AuthorizationFailed"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s carries ARM's %q: %s", what, secret, text)
			}
		}
	}
	if !strings.HasPrefix(event, corev1.EventTypeWarning+" "+EventFailed) {
		t.Errorf("event %q, want a %s warning", event, EventFailed)
	}
}

// The patch that lifts the gate also dates it, so that kubectl describe pod
// tells when the identities were ready at no extra write; nothing else
// writes or rewrites that date.
func TestGateLiftDatesReadiness(t *testing.T) {
	pool, err := nodepool.ParseID("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachineScaleSets/pool")
	if err != nil {
		t.Fatal(err)
	}
	const earlier = "2026-01-02T03:04:05Z"
	now := time.Date(2026, 12, 7, 12, 30, 45, 500, time.UTC)
	tests := []struct {
		name      string
		state     aadv1.AssignmentState
		scheduled bool   // on the node, gate long lifted
		readyAt   string // the pod's annotation before the round
		wantGated bool
		want      string
	}{
		{name: "assigned: gate lifted and dated", state: aadv1.StateAssigned, want: now.Truncate(time.Second).Format(time.RFC3339)},
		{name: "still assigning: gated, no date", state: aadv1.StateAssigning, wantGated: true},
		{name: "gate lifted before: date kept", state: aadv1.StateAssigned, scheduled: true, readyAt: earlier, want: earlier},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "mine"},
				Spec: aadv1.AzureIdentitySpec{ClientID: "client-a", ResourceID: "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mine"}}
			record := &aadv1.AzureAssignedIdentity{
				ObjectMeta: metav1.ObjectMeta{Namespace: "sys", Name: identity.RecordName(pool)},
				Spec:       aadv1.AzureAssignedIdentitySpec{NodePool: pool.ID()},
				Status: aadv1.AzureAssignedIdentityStatus{Identities: []aadv1.IdentityAssignment{{
					AzureIdentityRef: aadv1.IdentityReference{Namespace: "ns", Name: "mine"},
					ClientID:         id.Spec.ClientID, ResourceID: id.Spec.ResourceID, State: tc.state,
				}}},
			}
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a",
					Labels:      map[string]string{aadv1.BindingLabel: "sel"},
					Annotations: map[string]string{aadv1.AnnotationIdentities: "ns/mine"}},
				Spec: corev1.PodSpec{SchedulingGates: []corev1.PodSchedulingGate{{Name: aadv1.SchedulingGate}}},
			}
			if tc.scheduled {
				pod.Spec = corev1.PodSpec{NodeName: "n"}
				pod.Annotations[aadv1.AnnotationIdentitiesReadyAt] = tc.readyAt
			}
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{corev1.LabelOSStable: "linux"}}, Spec: corev1.NodeSpec{ProviderID: "azure://" + pool.ID() + "/virtualMachines/0"}}
			bind := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "bind"}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "mine", Selector: "sel"}}
			c := fake.NewClientBuilder().WithScheme(identity.Scheme()).WithObjects(id, bind, pod, node, record).
				WithIndex(&aadv1.AzureIdentityBinding{}, identity.BindingSelectorIndex, identity.IndexBindingSelector).Build()
			r := &podReconciler{client: c, resolver: &identity.Resolver{Cache: c}, recorder: events.NewFakeRecorder(10), namespace: "sys",
				nmi: nodepool.Default(), clock: clocktesting.NewFakePassiveClock(now)}

			if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: client.ObjectKeyFromObject(pod)}); err != nil {
				t.Fatal(err)
			}
			var got corev1.Pod
			if err := c.Get(t.Context(), client.ObjectKeyFromObject(pod), &got); err != nil {
				t.Fatal(err)
			}
			readyAt, dated := got.Annotations[aadv1.AnnotationIdentitiesReadyAt]
			if identity.HasGate(&got) != tc.wantGated || readyAt != tc.want || dated != (tc.want != "") {
				t.Errorf("gated %v, %s %q (set %v); want gated %v, %q", identity.HasGate(&got), aadv1.AnnotationIdentitiesReadyAt, readyAt, dated, tc.wantGated, tc.want)
			}
		})
	}
}
