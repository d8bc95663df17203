//go:build integration

package charts

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
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
	applyPolicies(t, ns, 2)

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
	as := func(user string) client.Client {
		c := rest.CopyConfig(cfg)
		c.Impersonate = rest.ImpersonationConfig{UserName: user}
		cl, err := client.New(c, client.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
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
	applyPolicies(t, ns, 4, "policies.requireDropNetRaw.enabled=true")
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
