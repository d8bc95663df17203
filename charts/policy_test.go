//go:build integration

package charts

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// Through pods/status and pods/binding, nobody but the project's service
// accounts may change what NMI trusts (the binding label and the
// aadpodidentity.k8s.io annotations), while status updates themselves pass.
func TestPodSubresourcePolicy(t *testing.T) {
	const ns = "aadpi-policy"
	ctx := context.Background()
	createNamespace(t, ns)
	applyPolicies(t, ns, 4)

	// mallory may write pod status and bind pods in the namespace, nothing more.
	const mallory = "mallory"
	assigner := "system:serviceaccount:" + ns + ":" + goldenRelease + "-assigner"
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "status-writer"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "pods/status"}, Verbs: []string{"get", "update", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"pods/binding"}, Verbs: []string{"create"}},
		},
	}
	grant := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "status-writer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{
			{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: mallory},
			{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: goldenRelease + "-assigner"},
		},
	}
	for _, o := range []client.Object{role, grant} {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	as := func(user string) client.Client { return impersonate(t, rest.ImpersonationConfig{UserName: user}) }
	newPod := func(name string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{aadv1.BindingLabel: "demo"},
				Annotations: map[string]string{aadv1.AnnotationIdentities: ns + "/demo", aadv1.AnnotationClientIDs: "c-demo"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "demo"}}},
		}
		if err := k8s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	victim := newPod("victim")

	statusUpdate := func(user string, change func(*corev1.Pod)) error {
		p := &corev1.Pod{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(victim), p); err != nil {
			t.Fatal(err)
		}
		change(p)
		return as(user).Status().Update(ctx, p)
	}
	relabel := func(p *corev1.Pod) { p.Labels[aadv1.BindingLabel] = "admin" }
	// The policy reaches the apiserver's admission through an informer.
	deadline := time.Now().Add(30 * time.Second)
	for statusUpdate(mallory, relabel) == nil {
		if time.Now().After(deadline) {
			t.Fatal("a pods/status update relabelled the pod: the policy is not enforced")
		}
		if err := statusUpdate(assigner, func(p *corev1.Pod) { p.Labels[aadv1.BindingLabel] = "demo" }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	condition := func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: "example.com/Checked", Status: corev1.ConditionTrue})
	}
	tests := []struct {
		name    string
		user    string
		change  func(*corev1.Pod)
		allowed bool
		message string
	}{
		{"status only", mallory, condition, true, ""},
		{"unrelated annotation", mallory, func(p *corev1.Pod) { p.Annotations["example.com/note"] = "x" }, true, ""},
		{"relabel", mallory, relabel, false, "may not change metadata.labels[aadpodidbinding]"},
		{"remove the label", mallory, func(p *corev1.Pod) { delete(p.Labels, aadv1.BindingLabel) }, false, "metadata.labels[aadpodidbinding]"},
		{"forge the identities", mallory, func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationIdentities] = "kube-system/admin" }, false, "metadata.annotations[aadpodidentity.k8s.io/*]"},
		{"add an annotation of ours", mallory, func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentAssigned }, false, "metadata.annotations"},
		{"remove an annotation of ours", mallory, func(p *corev1.Pod) { delete(p.Annotations, aadv1.AnnotationClientIDs) }, false, "metadata.annotations"},
		{"the assigner may", assigner, func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentAssigned }, true, ""},
	}
	for _, tt := range tests {
		t.Run("status: "+tt.name, func(t *testing.T) {
			err := statusUpdate(tt.user, tt.change)
			switch {
			case tt.allowed && err != nil:
				t.Fatalf("refused: %v", err)
			case !tt.allowed && (err == nil || !strings.Contains(err.Error(), tt.message)):
				t.Fatalf("got %v, want a denial containing %q", err, tt.message)
			}
		})
	}

	bind := func(pod string, ann map[string]string) error {
		b := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod, Annotations: ann}, Target: corev1.ObjectReference{Kind: "Node", Name: "node-1"}}
		return as(mallory).SubResource("binding").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod}}, b)
	}
	t.Run("binding: annotations of ours", func(t *testing.T) {
		newPod("bound-forged")
		if err := bind("bound-forged", map[string]string{aadv1.AnnotationIdentities: "kube-system/admin"}); err == nil || !strings.Contains(err.Error(), "pods/binding") {
			t.Fatalf("got %v, want a denial", err)
		}
	})
	t.Run("binding: plain", func(t *testing.T) {
		newPod("bound")
		if err := bind("bound", map[string]string{"example.com/note": "x"}); err != nil {
			t.Fatalf("refused: %v", err)
		}
	})
}

// impersonate is a client acting as who.
func impersonate(t *testing.T, who rest.ImpersonationConfig) client.Client {
	t.Helper()
	c := rest.CopyConfig(cfg)
	c.Impersonate = who
	cl, err := client.New(c, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// grantCluster gives the users verbs on resources (of the core group) in
// every namespace, so that a denial in a test comes from a policy.
func grantCluster(t *testing.T, name string, resources, verbs []string, users ...string) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: resources, Verbs: verbs}}}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}}
	for _, u := range users {
		binding.Subjects = append(binding.Subjects, rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: u})
	}
	for _, o := range []client.Object{role, binding} {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), o) })
	}
}

// wantDenial fails t unless err is a denial containing message, or, with
// message "", no error.
func wantDenial(t *testing.T, err error, message string) {
	t.Helper()
	switch {
	case message == "" && err != nil:
		t.Fatalf("refused: %v", err)
	case message != "" && (err == nil || !strings.Contains(err.Error(), message)):
		t.Fatalf("got %v, want a denial containing %q", err, message)
	}
}

// untilDenied retries probe until it fails: a policy reaches the
// apiserver's admission through an informer.
func untilDenied(t *testing.T, probe func(attempt int) error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 0; probe(attempt) == nil; attempt++ {
		if time.Now().After(deadline) {
			t.Fatal("the policy is not enforced")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The webhook's and the assigner's service accounts, which may patch every
// pod and whom the pod validator trusts, can change the
// aadpodidentity.k8s.io/ annotations and gates of a pod and nothing else.
func TestTrustedPodWritesPolicy(t *testing.T) {
	const ns = "aadpi-trusted-writes"
	ctx := context.Background()
	createNamespace(t, ns)
	applyPolicies(t, ns, 4)
	sa := func(component string) string {
		return "system:serviceaccount:" + ns + ":" + goldenRelease + "-" + component
	}
	webhook, assigner, mallory := sa("webhook"), sa("assigner"), "mallory"
	grantCluster(t, "aadpi-trusted-writes", []string{"pods"}, []string{"get", "patch"}, webhook, assigner, mallory)

	const otherGate = "example.com/other"
	pods := 0
	newPod := func() *corev1.Pod {
		pods++
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprint("pod-", pods), Labels: map[string]string{aadv1.BindingLabel: "demo"},
				Annotations: map[string]string{aadv1.AnnotationIdentities: ns + "/demo", "example.com/note": "x"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "demo"}},
				SchedulingGates: []corev1.PodSchedulingGate{{Name: aadv1.SchedulingGate}, {Name: otherGate}}},
		}
		if err := k8s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	patch := func(user string, change func(*corev1.Pod)) error {
		p := newPod()
		orig := p.DeepCopy()
		change(p)
		return impersonate(t, rest.ImpersonationConfig{UserName: user}).Patch(ctx, p, client.MergeFrom(orig))
	}
	relabel := func(p *corev1.Pod) { p.Labels[aadv1.BindingLabel] = "admin" }
	untilDenied(t, func(int) error { return patch(webhook, relabel) })

	withoutGate := func(name string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Spec.SchedulingGates = slices.DeleteFunc(p.Spec.SchedulingGates, func(g corev1.PodSchedulingGate) bool { return g.Name == name })
		}
	}
	record := func(p *corev1.Pod) {
		p.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentAssigned
		withoutGate(aadv1.SchedulingGate)(p)
	}
	tests := []struct {
		name    string
		user    string
		change  func(*corev1.Pod)
		message string // "": allowed
	}{
		{"webhook: adoption's annotations", webhook, func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationClientIDs] = "c-demo" }, ""},
		{"webhook: lifts our gate", webhook, withoutGate(aadv1.SchedulingGate), ""},
		{"webhook: relabels", webhook, relabel, "may not change metadata.labels"},
		{"webhook: adds a label", webhook, func(p *corev1.Pod) { p.Labels["example.com/role"] = "admin" }, "may not change metadata.labels"},
		{"webhook: another annotation", webhook, func(p *corev1.Pod) { p.Annotations["example.com/note"] = "y" }, "may change only the aadpodidentity.k8s.io/ annotations"},
		{"webhook: removes another annotation", webhook, func(p *corev1.Pod) { delete(p.Annotations, "example.com/note") }, "aadpodidentity.k8s.io/ annotations"},
		{"webhook: another gate", webhook, withoutGate(otherGate), "may change only the aadpodidentity.k8s.io/ scheduling gates"},
		{"webhook: an image", webhook, func(p *corev1.Pod) { p.Spec.Containers[0].Image = "evil" }, "scheduling gates of a pod spec"},
		{"webhook: a toleration", webhook, func(p *corev1.Pod) {
			p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: "k", Operator: corev1.TolerationOpExists})
		}, "scheduling gates of a pod spec"},
		{"webhook: a node selector (gated pod)", webhook, func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"pool": "admin"} }, "scheduling gates of a pod spec"},
		{"assigner: records the assignment and lifts the gate", assigner, record, ""},
		{"assigner: relabels", assigner, relabel, "may not change metadata.labels"},
		{"assigner: an image with the gate", assigner, func(p *corev1.Pod) { record(p); p.Spec.Containers[0].Image = "evil" }, "scheduling gates of a pod spec"},
		{"assigner: a deadline", assigner, func(p *corev1.Pod) { p.Spec.ActiveDeadlineSeconds = ptr.To[int64](1) }, "scheduling gates of a pod spec"},
		{"assigner: a finalizer", assigner, func(p *corev1.Pod) { p.Finalizers = append(p.Finalizers, "example.com/hold") }, "metadata.finalizers"},
		{"anyone else: not this policy's concern", mallory, func(p *corev1.Pod) { p.Labels["example.com/role"] = "x" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantDenial(t, patch(tt.user, tt.change), tt.message)
		})
	}
}

// With removeStartupTaint, NMI's service account may update nodes, but
// only its own (the node its token is bound to) and only to remove the
// startup taint.
func TestNMINodePolicy(t *testing.T) {
	const ns = "aadpi-nmi-node"
	ctx := context.Background()
	createNamespace(t, ns)
	applyPolicies(t, ns, 6, "nmi.removeStartupTaint=true")
	nmi := "system:serviceaccount:" + ns + ":" + goldenRelease + "-nmi"
	grantCluster(t, "aadpi-nmi-node", []string{"nodes"}, []string{"get", "update"}, nmi)

	const otherTaint = "example.com/other"
	nodes := 0
	newNode := func() string {
		nodes++
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("aadpi-nmi-node-", nodes), Labels: map[string]string{"pool": "a"}},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{
				{Key: aadv1.NMINotReadyTaint, Effect: corev1.TaintEffectNoSchedule},
				{Key: otherTaint, Effect: corev1.TaintEffectNoSchedule},
			}},
		}
		if err := k8s.Create(ctx, n); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), n) })
		return n.Name
	}
	withoutTaint := func(key string) func(*corev1.Node) {
		return func(n *corev1.Node) {
			n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key })
		}
	}
	// update changes a fresh node as NMI on tokenNode ("": a token bound to
	// no node; "self": the node changed).
	update := func(tokenNode string, change func(*corev1.Node)) error {
		name := newNode()
		who := rest.ImpersonationConfig{UserName: nmi}
		if tokenNode == "self" {
			tokenNode = name
		}
		if tokenNode != "" {
			who.Extra = map[string][]string{"authentication.kubernetes.io/node-name": {tokenNode}}
		}
		c := impersonate(t, who)
		n := &corev1.Node{}
		if err := c.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
			t.Fatal(err)
		}
		change(n)
		return c.Update(ctx, n)
	}
	untilDenied(t, func(int) error { return update("aadpi-elsewhere", withoutTaint(aadv1.NMINotReadyTaint)) })

	tests := []struct {
		name, tokenNode string
		change          func(*corev1.Node)
		message         string // "": allowed
	}{
		{"removes the startup taint of its own node", "self", withoutTaint(aadv1.NMINotReadyTaint), ""},
		{"another node's taint", "aadpi-elsewhere", withoutTaint(aadv1.NMINotReadyTaint), "may update only its own node"},
		{"a token bound to no node", "", withoutTaint(aadv1.NMINotReadyTaint), "may update only its own node"},
		{"another taint", "self", withoutTaint(otherTaint), "may only remove the aadpodidentity.k8s.io/nmi-not-ready taint"},
		{"adds a taint", "self", func(n *corev1.Node) {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "example.com/more", Effect: corev1.TaintEffectNoExecute})
		}, "may only remove"},
		{"a label, with the taint", "self", func(n *corev1.Node) { withoutTaint(aadv1.NMINotReadyTaint)(n); n.Labels["pool"] = "admin" }, "nothing of a node but its startup taint"},
		{"cordons it, with the taint", "self", func(n *corev1.Node) { withoutTaint(aadv1.NMINotReadyTaint)(n); n.Spec.Unschedulable = true }, "nothing of a node but its startup taint"},
		{"its provider ID, with the taint", "self", func(n *corev1.Node) {
			withoutTaint(aadv1.NMINotReadyTaint)(n)
			n.Spec.ProviderID = "azure:///subscriptions/s/x"
		}, "nothing of a node"},
		{"an annotation, with the taint", "self", func(n *corev1.Node) {
			withoutTaint(aadv1.NMINotReadyTaint)(n)
			n.Annotations = map[string]string{"example.com/note": "x"}
		}, "nothing of a node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantDenial(t, update(tt.tokenNode, tt.change), tt.message)
		})
	}
}

// applyPolicies renders the chart into ns with set and applies its
// ValidatingAdmissionPolicies and their bindings, expecting want objects.
func applyPolicies(t *testing.T, ns string, want int, set ...string) {
	t.Helper()
	ctx := context.Background()
	manifest, err := render(goldenRelease, ns, "", set...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := objects(manifest)
	if err != nil {
		t.Fatal(err)
	}
	applied := 0
	for _, o := range objs {
		if !strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy") {
			continue
		}
		if err := k8s.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), client.ForceOwnership, client.FieldOwner("aadpi-chart-test")); err != nil {
			t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), o) })
		applied++
	}
	if applied != want {
		t.Fatalf("the chart rendered %d policy objects, want %d", applied, want)
	}
}

// The example policy, when enabled, refuses pods that keep NET_RAW.
func TestRequireDropNetRawPolicy(t *testing.T) {
	const ns = "aadpi-netraw"
	ctx := context.Background()
	createNamespace(t, ns)
	applyPolicies(t, ns, 6, "policies.requireDropNetRaw.enabled=true")
	drop := func(caps ...corev1.Capability) *corev1.SecurityContext {
		return &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: caps}}
	}
	newPod := func(name string, sc *corev1.SecurityContext, init *corev1.SecurityContext) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "demo", SecurityContext: sc}}}}
		if init != nil {
			p.Spec.InitContainers = []corev1.Container{{Name: "i", Image: "demo", SecurityContext: init}}
		}
		return p
	}
	readd := drop("ALL")
	readd.Capabilities.Add = []corev1.Capability{"NET_RAW"}
	tests := []struct {
		name    string
		pod     *corev1.Pod
		allowed bool
	}{
		{"drops NET_RAW", newPod("drops", drop("NET_RAW"), nil), true},
		{"drops ALL", newPod("drops-all", drop("ALL"), drop("ALL")), true},
		{"no security context", newPod("plain", nil, nil), false},
		{"init container keeps it", newPod("init-keeps", drop("ALL"), drop("CHOWN")), false},
		{"adds it back", newPod("readds", readd, nil), false},
	}
	// The policy reaches admission through an informer.
	deadline := time.Now().Add(30 * time.Second)
	for probe := 0; ; probe++ {
		err := k8s.Create(ctx, newPod(fmt.Sprint("probe-", probe), nil, nil), client.DryRunAll)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the policy is not enforced")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := k8s.Create(ctx, tt.pod)
			switch {
			case tt.allowed && err != nil:
				t.Fatalf("refused: %v", err)
			case !tt.allowed && (err == nil || !strings.Contains(err.Error(), "NET_RAW")):
				t.Fatalf("got %v, want a denial naming NET_RAW", err)
			}
		})
	}
}

// With federation NMI may create service-account tokens only for Azure AD:
// audience api://AzureADTokenExchange, bound to a pod, 10 minutes at most.
func TestNMITokenRequestPolicy(t *testing.T) {
	const ns = "aadpi-nmi-token"
	ctx := context.Background()
	createNamespace(t, ns)
	applyPolicies(t, ns, 6, "policy.mode=federated", "policy.federation.tenantID="+testTenant)
	nmi := "system:serviceaccount:" + ns + ":" + goldenRelease + "-nmi"
	grantCluster(t, "aadpi-nmi-token", []string{"serviceaccounts/token"}, []string{"create"}, nmi)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"},
		Spec: corev1.PodSpec{ServiceAccountName: "app", Containers: []corev1.Container{{Name: "c", Image: "busybox",
			// TestRequireDropNetRawPolicy's policy may be in force.
			SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}}}}
	for _, o := range []client.Object{sa, pod} {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	podRef := &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	request := func(user string, spec authenticationv1.TokenRequestSpec) error {
		c := impersonate(t, rest.ImpersonationConfig{UserName: user})
		return c.SubResource("token").Create(ctx, sa.DeepCopy(), &authenticationv1.TokenRequest{Spec: spec})
	}
	azure := []string{"api://AzureADTokenExchange"}
	untilDenied(t, func(int) error {
		return request(nmi, authenticationv1.TokenRequestSpec{Audiences: []string{"https://kubernetes.default.svc"}, BoundObjectRef: podRef, ExpirationSeconds: ptr.To[int64](600)})
	})

	tests := []struct {
		name, user string
		spec       authenticationv1.TokenRequestSpec
		message    string // "": allowed
	}{
		{"NMI's request", nmi, authenticationv1.TokenRequestSpec{Audiences: azure, BoundObjectRef: podRef, ExpirationSeconds: ptr.To[int64](600)}, ""},
		{"the apiserver's audience", nmi, authenticationv1.TokenRequestSpec{BoundObjectRef: podRef, ExpirationSeconds: ptr.To[int64](600)}, "only for the audience api://AzureADTokenExchange"},
		{"Azure AD's and another audience", nmi, authenticationv1.TokenRequestSpec{Audiences: append(azure, "https://vault.example"), BoundObjectRef: podRef, ExpirationSeconds: ptr.To[int64](600)}, "only for the audience"},
		{"bound to nothing", nmi, authenticationv1.TokenRequestSpec{Audiences: azure, ExpirationSeconds: ptr.To[int64](600)}, "bound to a pod"},
		{"an hour", nmi, authenticationv1.TokenRequestSpec{Audiences: azure, BoundObjectRef: podRef, ExpirationSeconds: ptr.To[int64](3600)}, "at most 10 minutes"},
		{"the default lifetime", nmi, authenticationv1.TokenRequestSpec{Audiences: azure, BoundObjectRef: podRef}, "at most 10 minutes"},
		{"someone else is not held to it", "aadpi-admin", authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}, ""},
	}
	grantCluster(t, "aadpi-nmi-token-admin", []string{"serviceaccounts/token"}, []string{"create"}, "aadpi-admin")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantDenial(t, request(tt.user, tt.spec), tt.message)
		})
	}
}
