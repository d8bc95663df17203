package webhook

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// Only the live labelled pods created before the webhook configuration and
// never admitted are adopted, once, with an event; a younger pod without
// annotations slipped past admission and stays unadmitted, with a warning.
func TestAdoption(t *testing.T) {
	const clientID, resourceID = "c-demo", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/demo"
	installed := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "aad-pod-identity", CreationTimestamp: metav1.NewTime(installed)}}
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "demo"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: clientID, ResourceID: resourceID}}
	binding := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "demo-binding"},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "demo", Selector: "demo"}}
	pod := func(name string, created time.Time, mutate ...func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, CreationTimestamp: metav1.NewTime(created),
			Labels: map[string]string{aadv1.BindingLabel: "demo"}}}
		for _, m := range mutate {
			m(p)
		}
		return p
	}
	before, after := installed.Add(-time.Hour), installed.Add(time.Second)
	pods := []client.Object{
		pod("old", before),
		pod("same-second", installed),
		pod("young", after),
		pod("admitted", before, func(p *corev1.Pod) { p.Annotations = map[string]string{aadv1.AnnotationIdentities: ""} }),
		pod("ended", before, func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }),
		pod("unlabelled", before, func(p *corev1.Pod) { p.Labels = nil }),
		pod("unbound", before, func(p *corev1.Pod) { p.Labels[aadv1.BindingLabel] = "nothing" }),
	}
	c := fake.NewClientBuilder().WithScheme(identity.Scheme()).WithObjects(append(pods, mwc)...).Build()
	recorder := events.NewFakeRecorder(20)
	a := &adopter{reader: c, client: c, resolver: newResolver(t, id, binding), recorder: recorder,
		configuration: "aad-pod-identity", period: time.Second, log: logr.Discard()}
	for pass := range 2 {
		if err := a.adoptAll(context.Background()); err != nil {
			t.Fatalf("pass %d: %v", pass, err)
		}
	}
	want := map[string]map[string]string{
		"old":         {aadv1.AnnotationIdentities: "ns/demo", aadv1.AnnotationClientIDs: clientID},
		"unbound":     {aadv1.AnnotationIdentities: "", aadv1.AnnotationClientIDs: ""},
		"admitted":    {aadv1.AnnotationIdentities: ""},
		"same-second": nil, "young": nil, "ended": nil, "unlabelled": nil,
	}
	for name, ann := range want {
		var got corev1.Pod
		if err := c.Get(context.Background(), client.ObjectKey{Namespace: "ns", Name: name}, &got); err != nil {
			t.Fatal(err)
		}
		if len(got.Annotations) != len(ann) {
			t.Errorf("%s: annotations %v, want %v", name, got.Annotations, ann)
		}
		for k, v := range ann {
			if got.Annotations[k] != v {
				t.Errorf("%s: %s = %q, want %q", name, k, got.Annotations[k], v)
			}
		}
	}
	close(recorder.Events)
	var adopted, warned int
	for e := range recorder.Events {
		switch {
		case strings.HasPrefix(e, corev1.EventTypeNormal+" "+EventAdopted):
			adopted++
		case strings.HasPrefix(e, corev1.EventTypeWarning+" "+EventNotAdmitted):
			warned++
		default:
			t.Errorf("unexpected event %q", e)
		}
	}
	// Two adoptions in the first pass only; the two young pods warned of on each pass.
	if adopted != 2 || warned != 4 {
		t.Errorf("%d adoption and %d not-admitted events, want 2 and 4", adopted, warned)
	}
}

// Without the configuration the pass fails, and adopts nothing: it cannot
// tell pods that slipped past admission from older ones.
func TestAdoptionNeedsTheConfiguration(t *testing.T) {
	c := fake.NewClientBuilder().WithScheme(identity.Scheme()).Build()
	a := &adopter{reader: c, client: c, resolver: newResolver(t), recorder: events.NewFakeRecorder(1), configuration: "missing", log: logr.Discard()}
	if err := a.adoptAll(context.Background()); err == nil || !strings.Contains(err.Error(), "MutatingWebhookConfiguration missing") {
		t.Errorf("err = %v, want one naming the configuration", err)
	}
}
