package webhook

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	evanjsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/objects"
)

func TestResolutionPatch(t *testing.T) {
	msi := identity.Resolution{Identities: []identity.Resolved{{Namespace: "default", Name: "demo", ClientID: "c-demo", Type: aadv1.UserAssignedMSI}}}
	sp := identity.Resolution{Identities: []identity.Resolved{{Namespace: "default", Name: "sp", ClientID: "c-sp", Type: aadv1.ServicePrincipal}}}
	federated := identity.Resolution{Identities: []identity.Resolved{{Namespace: "default", Name: "fed", ClientID: "c-fed", Type: aadv1.UserAssignedMSI, Federated: true}}}
	gate := []corev1.PodSchedulingGate{{Name: aadv1.SchedulingGate}}
	pools := []nodepool.Pool{
		{Subscription: "s", ResourceGroup: "rg", Kind: nodepool.KindVMSS, Name: "a"},
		{Subscription: "s", ResourceGroup: "rg", Kind: nodepool.KindVMSS, Name: "b"},
	}
	tests := []struct {
		name      string
		pod       corev1.Pod
		res       identity.Resolution
		managed   bool
		pools     []nodepool.Pool
		wantAnn   map[string]string
		wantGates []corev1.PodSchedulingGate
	}{
		{name: "known target pools are recorded, Pending, with the gate", res: msi, pools: pools,
			wantAnn: map[string]string{aadv1.AnnotationIdentities: "default/demo", aadv1.AnnotationClientIDs: "c-demo",
				aadv1.AnnotationNodePools: pools[0].ID() + "," + pools[1].ID(), aadv1.AnnotationAssignment: aadv1.AssignmentPending},
			wantGates: gate},
		{name: "target pools only for a pod that is gated", res: msi, pools: pools, pod: corev1.Pod{Spec: corev1.PodSpec{NodeName: "node-1"}},
			wantAnn: map[string]string{aadv1.AnnotationIdentities: "default/demo", aadv1.AnnotationClientIDs: "c-demo"}},
		{name: "user-assigned identity gets annotations and gate", res: msi,
			wantAnn:   map[string]string{aadv1.AnnotationIdentities: "default/demo", aadv1.AnnotationClientIDs: "c-demo"},
			wantGates: gate},
		{name: "managed mode: annotations, no gate (no assigner would lift it)", res: msi, managed: true,
			wantAnn: map[string]string{aadv1.AnnotationIdentities: "default/demo", aadv1.AnnotationClientIDs: "c-demo"}},
		{name: "federated identity is not gated (nothing goes on a pool)", res: federated, pools: pools,
			wantAnn: map[string]string{aadv1.AnnotationIdentities: "default/fed", aadv1.AnnotationClientIDs: "c-fed"}},
		{name: "service principal is not gated", res: sp,
			wantAnn: map[string]string{aadv1.AnnotationIdentities: "default/sp", aadv1.AnnotationClientIDs: "c-sp"}},
		{name: "nothing resolved records empty annotations", res: identity.Resolution{},
			wantAnn: map[string]string{aadv1.AnnotationIdentities: "", aadv1.AnnotationClientIDs: ""}},
		{name: "bound pod cannot be gated", res: msi, pod: corev1.Pod{Spec: corev1.PodSpec{NodeName: "node-1"}},
			wantAnn: map[string]string{aadv1.AnnotationIdentities: "default/demo", aadv1.AnnotationClientIDs: "c-demo"}},
		{name: "creator-supplied annotations are replaced, others kept", res: identity.Resolution{},
			pod: corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{
				aadv1.AnnotationIdentities: "kube-system/cluster-admin", aadv1.AnnotationAssignment: "Assigned", aadv1.AnnotationPrefix + "x~y/z": "", "keep": "me"}}},
			wantAnn: map[string]string{aadv1.AnnotationIdentities: "", aadv1.AnnotationClientIDs: "", "keep": "me"}},
		{name: "existing gate is not duplicated", res: msi,
			pod:       corev1.Pod{Spec: corev1.PodSpec{SchedulingGates: gate}},
			wantAnn:   map[string]string{aadv1.AnnotationIdentities: "default/demo", aadv1.AnnotationClientIDs: "c-demo"},
			wantGates: gate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := applyPatch(t, &tt.pod, resolutionPatch(&tt.pod, tt.res, !tt.managed, tt.pools))
			if diff := cmp.Diff(tt.wantAnn, pod.Annotations); diff != "" {
				t.Errorf("annotations (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantGates, pod.Spec.SchedulingGates); diff != "" {
				t.Errorf("gates (-want +got):\n%s", diff)
			}
		})
	}
}

// applyPatch applies operations as the apiserver does.
func applyPatch(t *testing.T, pod *corev1.Pod, ops []jsonpatch.JsonPatchOperation) *corev1.Pod {
	t.Helper()
	patch, err := evanjsonpatch.DecodePatch(mustJSON(t, ops))
	if err != nil {
		t.Fatal(err)
	}
	patched, err := patch.Apply(mustJSON(t, pod))
	if err != nil {
		t.Fatalf("patch %s does not apply: %v", mustJSON(t, ops), err)
	}
	out := &corev1.Pod{}
	if err := json.Unmarshal(patched, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func podRequest(t testing.TB, op admissionv1.Operation, pod, old *corev1.Pod, user string) admission.Request {
	t.Helper()
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "uid", Operation: op, Namespace: "default",
		Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
	}}
	req.UserInfo.Username = user
	req.Object = runtime.RawExtension{Raw: mustJSON(t, pod)}
	if old != nil {
		req.OldObject = runtime.RawExtension{Raw: mustJSON(t, old)}
	}
	return req
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func labelled(selector string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{aadv1.BindingLabel: selector}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "demo", Image: "demo"}}},
	}
}

func TestPodMutatorHandle(t *testing.T) {
	id := objects.AzureIdentity("default", "demo", aadv1.UserAssignedMSI, "c-demo")
	b := objects.Binding("default", "demo-binding", "demo", "demo")
	m := podFrontEnd("mutate-pod", admission.NewDecoder(identity.Scheme()), &PodMutator{Resolver: newResolver(t, &id, &b), Gate: true})

	resp, reason := m.decide(context.Background(), podRequest(t, admissionv1.Create, labelled("demo"), nil, "alice"))
	if !resp.Allowed || reason != reasonResolved {
		t.Fatalf("allowed=%v reason=%s result=%+v", resp.Allowed, reason, resp.Result)
	}
	paths := map[string]bool{}
	for _, p := range resp.Patches {
		paths[p.Path] = true
	}
	for _, want := range []string{"/metadata/annotations", "/spec/schedulingGates"} {
		if !paths[want] {
			t.Errorf("no patch for %s in %+v", want, resp.Patches)
		}
	}

	nodes := fake.NewClientBuilder().WithScheme(identity.Scheme()).WithObjects(
		poolNode("n1", "a", "linux"), poolNode("w1", "w", "windows")).Build()
	targeting := podFrontEnd("mutate-pod", admission.NewDecoder(identity.Scheme()), &PodMutator{Resolver: newResolver(t, &id, &b), Gate: true, Nodes: nodes, NMI: nodepool.Default()})
	resp, _ = targeting.decide(context.Background(), podRequest(t, admissionv1.Create, labelled("demo"), nil, "alice"))
	pod := applyPatch(t, labelled("demo"), resp.Patches)
	if got := pod.Annotations[aadv1.AnnotationNodePools]; !strings.HasSuffix(got, "/virtualMachineScaleSets/a") || pod.Annotations[aadv1.AnnotationAssignment] != aadv1.AssignmentPending {
		t.Errorf("with nodes: annotations %v, want the Linux node's pool only, Pending", pod.Annotations)
	}
	// A pod that can only run where NMI does not: its identities would be
	// readable there by every pod, so it is refused, saying why.
	windows := labelled("demo")
	windows.Spec.NodeSelector = map[string]string{corev1.LabelOSStable: "windows"}
	resp, reason = targeting.decide(context.Background(), podRequest(t, admissionv1.Create, windows, nil, "alice"))
	if resp.Allowed || reason != reasonNotCovered || !strings.Contains(resp.Result.Message, "where NMI does not run") {
		t.Errorf("pod for nodes without NMI: allowed=%v reason=%s result=%+v, want refused", resp.Allowed, reason, resp.Result)
	}

	resp, reason = m.decide(context.Background(), podRequest(t, admissionv1.Create, labelled("nobody"), nil, "alice"))
	if !resp.Allowed || reason != reasonNoBinding || len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "matches no AzureIdentityBinding") {
		t.Fatalf("unbound label: allowed=%v reason=%s warnings=%v", resp.Allowed, reason, resp.Warnings)
	}
}

// poolNode is a node of VMSS pool with the OS label os.
func poolNode(name, pool, os string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelOSStable: os}},
		Spec:       corev1.NodeSpec{ProviderID: "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/" + pool + "/virtualMachines/0"},
	}
}

func TestPodMutatorRejectsBadRequests(t *testing.T) {
	m := podFrontEnd("mutate-pod", admission.NewDecoder(identity.Scheme()), &PodMutator{Resolver: newResolver(t), Gate: true})
	good := podRequest(t, admissionv1.Create, labelled("demo"), nil, "alice")
	tests := []struct {
		name   string
		modify func(*admission.Request)
		want   string
	}{
		{"wrong kind", func(r *admission.Request) { r.Kind.Kind = "Service" }, "expected a Pod"},
		{"no object", func(r *admission.Request) { r.Object.Raw = nil }, "no object"},
		{"malformed object", func(r *admission.Request) { r.Object.Raw = []byte(`{"metadata": 7`) }, "decoding Pod"},
		{"object of another kind", func(r *admission.Request) { r.Object.Raw = []byte(`{"apiVersion":"v1","kind":"Service"}`) }, "decoding Pod"},
		{"pod without metadata", func(r *admission.Request) {
			r.Object.Raw = []byte(`{"apiVersion":"v1","kind":"Pod","spec":{"containers":[{"name":"c"}]}}`)
		}, "neither metadata.name"},
		{"pod without containers", func(r *admission.Request) {
			r.Object.Raw = []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}`)
		}, "no spec.containers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := good
			req.AdmissionRequest = *good.AdmissionRequest.DeepCopy()
			tt.modify(&req)
			resp, reason := m.decide(context.Background(), req)
			if resp.Allowed || resp.Result.Code != http.StatusBadRequest || reason != reasonBadRequest || !strings.Contains(resp.Result.Message, tt.want) {
				t.Fatalf("allowed=%v code=%d reason=%s message=%q, want 400 containing %q", resp.Allowed, resp.Result.Code, reason, resp.Result.Message, tt.want)
			}
		})
	}
}
