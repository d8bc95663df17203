package assigner

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
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
