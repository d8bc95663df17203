//go:build integration

package assigner_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/assigner"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// One control plane serves every test of the package; each test has its
// own namespaces, nodes, fake cloud and assigner.
var controlPlane framework.Shared

// world is one test's cluster objects, fake cloud and running assigner.
type world struct {
	t        testing.TB
	ctx      context.Context
	c        client.Client
	cfg      *rest.Config
	state    *fakeazure.State
	arm      *fakeazure.ARM
	ca       *testca.CA
	sub      string
	ns       string // pods, identities, bindings
	recordNS string // AzureAssignedIdentity records
	opts     assigner.Options
	stop     func()
}

type worldOption func(*assigner.Options)

func newWorld(t testing.TB, opts ...worldOption) *world {
	t.Helper()
	_, cfg := controlPlane.Start(t)
	c, err := client.New(cfg, client.Options{Scheme: identity.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := testca.New("fake-azure-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	state := fakeazure.NewState()
	fake, err := fakeazure.StartARM(state, ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	suffix := strings.ToLower(uuid.NewString()[:8])
	w := &world{t: t, ctx: context.Background(), c: c, cfg: cfg, state: state, arm: fake, ca: ca, sub: uuid.NewString(),
		ns: "aadpi-asg-" + suffix, recordNS: "aadpi-asg-sys-" + suffix}
	for _, ns := range []string{w.ns, w.recordNS} {
		if err := c.Create(w.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(w.cleanup)
	cloudCfg := cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
		cloud.ResourceManager: {Endpoint: fake.URL, Audience: "https://management.core.windows.net/"},
	}}
	w.opts = assigner.Options{
		Namespace:        w.recordNS,
		ARM:              assigner.NewARM(fakeazure.StaticCredential{}, assigner.ARMOptions(cloudCfg, ca.Client()), 50*time.Millisecond),
		GCGracePeriod:    time.Hour,
		DriftCheckPeriod: time.Hour,
	}
	for _, o := range opts {
		o(&w.opts)
	}
	w.start()
	return w
}

// start runs an assigner until stop (or the test's end).
func (w *world) start() {
	w.t.Helper()
	mgr, err := assigner.NewManager(w.cfg, assigner.ManagerOptions{MetricsAddr: "0", ProbeAddr: "0"}, w.opts)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(w.ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	w.stop = func() {
		cancel()
		if err := <-done; err != nil {
			w.t.Errorf("assigner: %v", err)
		}
		w.stop = func() {}
	}
}

// cleanup stops the assigner first, then removes what the test created so
// that later tests' assigners do not see it (envtest has no namespace
// controller).
func (w *world) cleanup() {
	w.stop()
	ctx := context.Background()
	_ = w.c.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(w.ns), client.GracePeriodSeconds(0))
	_ = w.c.DeleteAllOf(ctx, &aadv1.AzureAssignedIdentity{}, client.InNamespace(w.recordNS))
	_ = w.c.DeleteAllOf(ctx, &corev1.Node{}, client.MatchingLabels{"aadpi-test": w.ns})
}

// pool creates a VMSS in the fake cloud and one Node on it.
func (w *world) pool(name string, systemAssigned bool, labels map[string]string, taints ...corev1.Taint) fakeazure.Pool {
	w.t.Helper()
	p := w.state.AddPool(fakeazure.KindVMSS, w.sub, "mc-rg", name, 1, systemAssigned)
	l := map[string]string{"aadpi-test": w.ns, "pool": name, corev1.LabelOSStable: "linux"}
	for k, v := range labels {
		l[k] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: w.ns + "-" + name, Labels: l},
		Spec:       corev1.NodeSpec{ProviderID: "azure://" + p.ID + "/virtualMachines/0", Taints: taints},
	}
	if err := w.c.Create(w.ctx, node); err != nil {
		w.t.Fatal(err)
	}
	return p
}

// identity creates a user-assigned identity in the fake cloud, its
// AzureIdentity and a binding with selector = name.
func (w *world) identity(name string) fakeazure.Identity {
	w.t.Helper()
	id := w.state.CreateIdentity(w.sub, "ids-rg", name)
	w.azureIdentity(name, id.ResourceID, id.ClientID)
	w.binding(name, name, name)
	return id
}

func (w *world) azureIdentity(name, resourceID, clientID string) {
	w.t.Helper()
	ai := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: resourceID, ClientID: clientID}}
	if err := w.c.Create(w.ctx, ai); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) binding(name, identity, selector string) {
	w.t.Helper()
	b := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector}}
	if err := w.c.Create(w.ctx, b); err != nil {
		w.t.Fatal(err)
	}
}

// pod creates a pod as the admission webhook leaves it: label, identity
// annotations and, when a user-assigned identity resolved, the gate with
// the target pools, Pending.
func (w *world) pod(name, selector string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	w.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name, Labels: map[string]string{aadv1.BindingLabel: selector}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "demo"}}},
	}
	for _, m := range mutate {
		m(pod)
	}
	w.admission().admit(pod)
	if err := w.c.Create(w.ctx, pod); err != nil {
		w.t.Fatal(err)
	}
	return pod
}

// admission is what the webhook reads to admit a pod: the world's
// bindings, identities and nodes, read once.
type admission struct {
	ns         string
	bindings   aadv1.AzureIdentityBindingList
	identities aadv1.AzureIdentityList
	nodes      corev1.NodeList
	nmi        nodepool.Coverage
}

func (w *world) admission() *admission {
	w.t.Helper()
	a := &admission{ns: w.ns, nmi: nodepool.Default()}
	for _, list := range []client.ObjectList{&a.bindings, &a.identities} {
		if err := w.c.List(w.ctx, list, client.InNamespace(w.ns)); err != nil {
			w.t.Fatal(err)
		}
	}
	if err := w.c.List(w.ctx, &a.nodes); err != nil {
		w.t.Fatal(err)
	}
	return a
}

// admit annotates and gates the pod as the webhook would.
func (a *admission) admit(pod *corev1.Pod) {
	res := identity.Resolve(a.ns, pod.Labels[aadv1.BindingLabel], a.bindings.Items, a.identities.Items, false, false)
	pod.Annotations = res.Annotations()
	if res.NeedsAssignment() && pod.Spec.NodeName == "" {
		pod.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: aadv1.SchedulingGate}}
		if pools, err := nodepool.Targets(pod, a.nodes.Items, a.nmi); err == nil {
			pod.Annotations[aadv1.AnnotationNodePools] = nodepool.JoinIDs(pools)
			pod.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentPending
		}
	}
}

func (w *world) getPod(name string) *corev1.Pod {
	w.t.Helper()
	var pod corev1.Pod
	if err := w.c.Get(w.ctx, client.ObjectKey{Namespace: w.ns, Name: name}, &pod); err != nil {
		w.t.Fatal(err)
	}
	return &pod
}

func gated(pod *corev1.Pod) bool {
	for _, g := range pod.Spec.SchedulingGates {
		if g.Name == aadv1.SchedulingGate {
			return true
		}
	}
	return false
}

// eventually polls cond until it returns nil or timeout passes.
// waitAssigned waits for a pod's gate to be lifted with assignment Assigned.
func (w *world) waitAssigned(name string, timeout time.Duration) *corev1.Pod {
	w.t.Helper()
	var pod *corev1.Pod
	framework.Eventually(w.t, timeout, "pod "+name+" assigned", func() error {
		pod = w.getPod(name)
		if a := pod.Annotations[aadv1.AnnotationAssignment]; a != aadv1.AssignmentAssigned || gated(pod) {
			return fmt.Errorf("pod %s: assignment %q, gated %v", name, a, gated(pod))
		}
		return nil
	})
	return pod
}

// records returns the entries of every pool's record.
func (w *world) records() []aadv1.IdentityAssignment {
	w.t.Helper()
	var list aadv1.AzureAssignedIdentityList
	if err := w.c.List(w.ctx, &list, client.InNamespace(w.recordNS)); err != nil {
		w.t.Fatal(err)
	}
	var out []aadv1.IdentityAssignment
	for _, rec := range list.Items {
		out = append(out, rec.Status.Identities...)
	}
	return out
}

// record returns the entry of AzureIdentity name on pool p.
func (w *world) record(name string, p fakeazure.Pool) (*aadv1.IdentityAssignment, error) {
	pool, err := nodepool.ParseID(p.ID)
	if err != nil {
		return nil, err
	}
	var rec aadv1.AzureAssignedIdentity
	if err := w.c.Get(w.ctx, client.ObjectKey{Namespace: w.recordNS, Name: identity.RecordName(pool)}, &rec); err != nil {
		return nil, err
	}
	if e := rec.Status.Find(w.ns, name); e != nil {
		return e, nil
	}
	return nil, fmt.Errorf("no entry for %s/%s on %s", w.ns, name, p.ID)
}

// patches counts the accepted or refused PATCHes per pool.
func (w *world) patches() map[string]int {
	out := map[string]int{}
	for _, wr := range w.arm.Writes() {
		out[strings.ToLower(wr.Pool)]++
	}
	return out
}
