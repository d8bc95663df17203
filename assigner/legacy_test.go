package assigner

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/compat"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// legacyRecord is 1.x's record of uami(1) for pod default/demo on node n1,
// as read through today's CRD, with edit's changes.
func legacyRecord(state aadv1.AssignmentState, edit func(*compat.Record1x)) *aadv1.AzureAssignedIdentity {
	r := compat.Record1x{Pod: types.NamespacedName{Namespace: "default", Name: "demo"}, Node: "n1",
		Identity: types.NamespacedName{Namespace: "default", Name: "demo"}, ResourceID: uami(1), State: state}
	if edit != nil {
		edit(&r)
	}
	return &aadv1.AzureAssignedIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo-default-demo"},
		Spec: aadv1.AzureAssignedIdentitySpec{LegacyRecordSpec: aadv1.LegacyRecordSpec{
			LegacyIdentityRef: &aadv1.LegacyIdentityReference{
				Metadata: &aadv1.LegacyObjectMeta{Namespace: r.Identity.Namespace, Name: r.Identity.Name},
				Spec:     &aadv1.LegacyIdentitySpec{ResourceID: r.ResourceID}},
			LegacyPod: r.Pod.Name, LegacyPodNamespace: r.Pod.Namespace, LegacyNodeName: r.Node,
		}},
		Status: aadv1.AzureAssignedIdentityStatus{LegacyRecordStatus: aadv1.LegacyRecordStatus{LegacyStatus: r.State}},
	}
}

// A 1.x record is kept while it may still prove that MIC put its identity
// on the node's pool for a running pod, and deleted once a record of ours
// settled what the identity is there, or once it proves nothing; records
// of ours are never touched.
func TestLegacyRecords(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{ProviderID: "azure://" + testPool.ID() + "/virtualMachines/0"}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo"}}
	ended := pod.DeepCopy()
	ended.Status.Phase = corev1.PodSucceeded
	ours := &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "sys", Name: identity.RecordName(testPool)},
		Spec: aadv1.AzureAssignedIdentitySpec{NodePool: testPool.ID()},
		Status: aadv1.AzureAssignedIdentityStatus{Identities: []aadv1.IdentityAssignment{
			{AzureIdentityRef: aadv1.IdentityReference{Namespace: "default", Name: "demo"}, ResourceID: uami(1), ClientID: clientIDOf(uami(1))}}}}
	tests := []struct {
		name   string
		legacy *aadv1.AzureAssignedIdentity
		others []client.Object
		kept   bool
	}{
		{"awaited: pod running, no record of ours", legacyRecord(aadv1.StateAssigned, nil), []client.Object{node, pod}, true},
		{"used: a record of ours", legacyRecord(aadv1.StateAssigned, nil), []client.Object{node, pod, ours}, false},
		{"pod gone", legacyRecord(aadv1.StateAssigned, nil), []client.Object{node}, false},
		{"pod ended", legacyRecord(aadv1.StateAssigned, nil), []client.Object{node, ended}, false},
		{"node gone", legacyRecord(aadv1.StateAssigned, nil), []client.Object{pod}, false},
		{"not assigned by MIC (1.x's Created)", legacyRecord("Created", nil), []client.Object{node, pod}, false},
		{"pruned to nothing", &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo-default-demo"}}, []client.Object{node, pod}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.NewClientBuilder().WithScheme(identity.Scheme()).
				WithIndex(&aadv1.AzureAssignedIdentity{}, recordPoolIndex, indexRecordPool).
				WithObjects(append(tt.others, tt.legacy)...).Build()
			r := &legacyReaper{client: c, namespace: "sys"}
			res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(tt.legacy)})
			if err != nil {
				t.Fatal(err)
			}
			err = c.Get(context.Background(), client.ObjectKeyFromObject(tt.legacy), &aadv1.AzureAssignedIdentity{})
			switch {
			case tt.kept && (err != nil || res.RequeueAfter != legacyRecheck):
				t.Errorf("got %v, requeue after %s; want it kept and looked at again in %s", err, res.RequeueAfter, legacyRecheck)
			case !tt.kept && !apierrors.IsNotFound(err):
				t.Errorf("got %v; want it deleted", err)
			}
			if len(tt.others) > 2 {
				if err := c.Get(context.Background(), client.ObjectKeyFromObject(ours), &aadv1.AzureAssignedIdentity{}); err != nil {
					t.Errorf("this assigner's record: %v, want it kept", err)
				}
			}
		})
	}
}

// Only a record MIC could have written vouches for the identity on the
// pool: Assigned, on a node of the pool, older than this installation, in
// the namespace of the AzureIdentity that wants the identity now and for
// that AzureIdentity, for a live labelled pod admitted for it. Any other is
// what a namespace user who may write AzureAssignedIdentities can forge.
func TestAssignedBy1x(t *testing.T) {
	installed := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	other := testPool
	other.Name = "other"
	nodes := []client.Object{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{ProviderID: "azure://" + testPool.ID() + "/virtualMachines/0"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}, Spec: corev1.NodeSpec{ProviderID: "azure://" + other.ID() + "/virtualMachines/0"}},
	}
	admitted := func(name, ns string, identities string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels:      map[string]string{aadv1.BindingLabel: "demo"},
			Annotations: map[string]string{aadv1.AnnotationIdentities: identities}}}
	}
	demoPod := admitted("demo", "default", "default/demo")
	record := func(edit func(*compat.Record1x)) *aadv1.AzureAssignedIdentity {
		rec := legacyRecord(aadv1.StateAssigned, edit)
		rec.CreationTimestamp = metav1.NewTime(installed.Add(-time.Hour))
		return rec
	}
	created := func(at time.Time) *aadv1.AzureAssignedIdentity {
		rec := record(nil)
		rec.CreationTimestamp = metav1.NewTime(at)
		return rec
	}
	inNamespace := func(ns string) *aadv1.AzureAssignedIdentity {
		rec := record(nil)
		rec.Namespace = ns
		return rec
	}
	unlabelled := demoPod.DeepCopy()
	unlabelled.Labels = nil
	ended := demoPod.DeepCopy()
	ended.Status.Phase = corev1.PodFailed
	tests := []struct {
		name    string
		records []client.Object
		pods    []client.Object
		before  time.Time
		want    string
	}{
		{"MIC's: assigned on a node of the pool for this pod and AzureIdentity", []client.Object{record(nil)}, []client.Object{demoPod}, installed, "demo-default-demo"},
		{"only on another pool", []client.Object{record(func(r *compat.Record1x) { r.Node = "n2" })}, []client.Object{demoPod}, installed, ""},
		{"1.x was removing it", []client.Object{record(func(r *compat.Record1x) { r.State = "Unassigned" })}, []client.Object{demoPod}, installed, ""},
		{"none", nil, []client.Object{demoPod}, installed, ""},
		{"forged: created since the installation", []client.Object{created(installed.Add(time.Second))}, []client.Object{demoPod}, installed, ""},
		{"forged: installation time unknown", []client.Object{record(nil)}, []client.Object{demoPod}, time.Time{}, ""},
		{"forged: in another namespace", []client.Object{inNamespace("attacker")}, []client.Object{demoPod}, installed, ""},
		{"forged: for another AzureIdentity", []client.Object{record(func(r *compat.Record1x) { r.Identity.Name = "mine" })}, []client.Object{demoPod}, installed, ""},
		{"forged: for a pod of another namespace", []client.Object{record(func(r *compat.Record1x) { r.Pod.Namespace = "attacker" })},
			[]client.Object{demoPod, admitted("demo", "attacker", "default/demo")}, installed, ""},
		{"forged: its pod does not exist", []client.Object{record(func(r *compat.Record1x) { r.Pod.Name = "ghost" })}, []client.Object{demoPod}, installed, ""},
		{"forged: its pod has no binding label", []client.Object{record(nil)}, []client.Object{unlabelled}, installed, ""},
		{"forged: its pod was not admitted for the AzureIdentity", []client.Object{record(nil)}, []client.Object{admitted("demo", "default", "default/other")}, installed, ""},
		{"its pod ended", []client.Object{record(nil)}, []client.Object{ended}, installed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.NewClientBuilder().WithScheme(identity.Scheme()).
				WithIndex(&aadv1.AzureAssignedIdentity{}, legacyResourceIndex, indexLegacyResource).
				WithObjects(append(append(tt.records, tt.pods...), nodes...)...).Build()
			got, err := assignedBy1x(context.Background(), c, evidence1x{pool: testPool, identity: types.NamespacedName{Namespace: "default", Name: "demo"}, resourceID: uami(1), before: tt.before})
			if err != nil {
				t.Fatal(err)
			}
			if name := nameOf(got); name != tt.want {
				t.Errorf("vouching record = %q, want %q", name, tt.want)
			}
		})
	}
}

func nameOf(rec *aadv1.AzureAssignedIdentity) string {
	if rec == nil {
		return ""
	}
	return rec.Name
}

// 1.x's records never enqueue pool rounds.
func TestLegacyRecordEnqueuesNoPool(t *testing.T) {
	if got := recordToPool(context.Background(), legacyRecord(aadv1.StateAssigned, nil)); got != nil {
		t.Errorf("1.x's record enqueues pool rounds %v", got)
	}
}
