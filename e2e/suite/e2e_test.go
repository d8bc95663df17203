//go:build e2e

package suite

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// TestE2E runs the cases on the installed release; each sets up what it
// needs and cleans up after itself, so any one runs alone
// (-run 'TestE2E/binding').
func TestE2E(t *testing.T) {
	runInstalled(t, []suiteCase{
		{"labelled pod gets its identity's token", testLabelledPod},
		{"unlabelled pod gets no token", testUnlabelledPod},
		{"pod in another namespace than the binding gets no token", testOtherNamespace},
		{"binding deleted while the pod runs", testBindingDeleted},
		{"AzureIdentity borrowing another identity's client ID", testBorrowedClientID},
		{"identity used on two pools", testTwoPools},
		{"service principal through a Secret", testServicePrincipal},
		{"AKS exception", testAKSException},
		{"NMI restarted", testNMIRestart},
		{"assigner killed mid-burst", testAssignerKilled},
		{"webhook down", testWebhookDown},
	})
}

// testLabelledPod: the walkthrough's path (e2e/demo runs the walkthrough
// itself): admitted, gated until the identity is on the pool, token through
// NMI, and IMDS never sees the pod.
func testLabelledPod(t *testing.T) {
	id := userIdentity(t, "e2e-labelled", "e2e-labelled")
	demoPod{Name: "labelled", Labels: map[string]string{aadv1.BindingLabel: "e2e-labelled"}, ClientID: id.ClientID}.create(t)
	pod := running(t, "default", "labelled")
	if got := pod.Annotations[aadv1.AnnotationAssignment]; got != "Assigned" {
		t.Errorf("assignment annotation %q, want Assigned", got)
	}
	waitFor(t, "default", "labelled", userToken, time.Time{}, time.Minute)
	pool := nodeOf(t, pod).Pool.ID
	if !env.sb.Azure.Assigned(pool, id.ClientID) {
		t.Errorf("identity %s is not on the pod's pool %s", id.ClientID, pool)
	}
	notReachedIMDS(t, pod)
}

// testUnlabelledPod: a pod without the label gets neither the identity nor
// the node's own, even naming the identity's client ID.
func testUnlabelledPod(t *testing.T) {
	id := userIdentity(t, "e2e-unlabelled", "e2e-unlabelled")
	// A labelled pod on the same pool puts the identity on the VMSS, so a
	// denial is NMI's doing and not IMDS's.
	demoPod{Name: "holder", Labels: map[string]string{aadv1.BindingLabel: "e2e-unlabelled"}, ClientID: id.ClientID, Node: node(t, 0).Name}.create(t)
	waitFor(t, "default", "holder", userToken, time.Time{}, time.Minute)
	demoPod{Name: "unlabelled", ClientID: id.ClientID, Node: node(t, 0).Name}.create(t)
	pod := running(t, "default", "unlabelled")
	denied(t, pod)
}

// testOtherNamespace: the label matches a binding, but in another namespace.
func testOtherNamespace(t *testing.T) {
	id := userIdentity(t, "e2e-otherns", "e2e-otherns")
	kubectl(t, "create", "namespace", "e2e-other")
	t.Cleanup(func() { _, _ = kubectlIn("delete", "namespace", "e2e-other", "--wait", "--timeout=2m") })
	demoPod{Name: "elsewhere", Namespace: "e2e-other", Labels: map[string]string{aadv1.BindingLabel: "e2e-otherns"}, ClientID: id.ClientID}.create(t)
	pod := running(t, "e2e-other", "elsewhere")
	if got := pod.Annotations[aadv1.AnnotationIdentities]; got != "" {
		t.Errorf("pod admitted for %q across namespaces", got)
	}
	denied(t, pod)
}

// denied checks a running demo pod is refused every token, its identity's
// and the node's, and never reached IMDS.
func denied(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	first := waitFor(t, pod.Namespace, pod.Name, userDenied, time.Time{}, 90*time.Second)
	if !strings.Contains(first.Line, "403") {
		t.Errorf("denial is not NMI's 403: %s", first.Line)
	}
	// Any round: an unknown caller waits out NMI's nmi.unknownCallerWait
	// (5 s) on each of the demo's requests, so a round takes a while.
	waitFor(t, pod.Namespace, pod.Name, defaultError, time.Time{}, 2*time.Minute)
	never(t, pod.Namespace, pod.Name, userToken)
	never(t, pod.Namespace, pod.Name, defaultToken)
	notReachedIMDS(t, pod)
}

// testBindingDeleted: NMI stops serving the pod once its binding is gone.
func testBindingDeleted(t *testing.T) {
	id := userIdentity(t, "e2e-unbound", "e2e-unbound")
	demoPod{Name: "unbound", Labels: map[string]string{aadv1.BindingLabel: "e2e-unbound"}, ClientID: id.ClientID}.create(t)
	running(t, "default", "unbound")
	waitFor(t, "default", "unbound", userToken, time.Time{}, time.Minute)
	deleted := time.Now()
	kubectl(t, "-n", "default", "delete", "azureidentitybinding", "e2e-unbound-binding")
	refused := waitFor(t, "default", "unbound", userDenied, deleted, 20*time.Second)
	t.Logf("token refused %s after the binding was deleted", refused.At.Sub(deleted).Round(10*time.Millisecond))
	if !strings.Contains(refused.Line, "403") {
		t.Errorf("refusal is not NMI's 403: %s", refused.Line)
	}
}

// testBorrowedClientID: an AzureIdentity pairs the client ID of an identity
// another team has on the pool with a resource ID of its own. ARM reports
// another client ID for that resource, so the assigner fails the
// assignment: the pod stays gated, with a stable reason in an event (ARM's
// answer, which names the resource's real client ID, only in the record),
// and never gets the other team's token.
func testBorrowedClientID(t *testing.T) {
	victim := userIdentity(t, "e2e-victim", "e2e-victim")
	n := node(t, 0)
	demoPod{Name: "victim", Labels: map[string]string{aadv1.BindingLabel: "e2e-victim"}, ClientID: victim.ClientID, Node: n.Name}.create(t)
	waitFor(t, "default", "victim", userToken, time.Time{}, time.Minute)

	own := env.sb.Azure.CreateIdentity(sandbox.SubscriptionID, sandbox.NodeResourceGroup, "e2e-borrower")
	t.Cleanup(func() { env.sb.Azure.DeleteIdentity(own.ResourceID) })
	applyIdentity(t, "e2e-borrower", "e2e-borrower", fmt.Sprintf("type: 0\n  resourceID: %s\n  clientID: %s", own.ResourceID, victim.ClientID))
	pod := demoPod{Name: "borrower", Labels: map[string]string{aadv1.BindingLabel: "e2e-borrower"}, ClientID: victim.ClientID, Node: n.Name}.create(t)
	framework.Eventually(t, time.Minute, "assignment failed for the borrowed client ID", func() error {
		events, err := env.client.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=borrower,reason=IdentityAssignmentFailed"})
		if err != nil {
			return err
		}
		for _, e := range events.Items {
			if strings.Contains(e.Message, own.ClientID) {
				t.Fatalf("the pod's event carries ARM's answer: %s", e.Message)
			}
			if strings.Contains(e.Message, "identity_assignment_failed") && strings.Contains(e.Message, "default/e2e-borrower") {
				return nil
			}
		}
		return fmt.Errorf("no IdentityAssignmentFailed event naming identity_assignment_failed and default/e2e-borrower among %d events", len(events.Items))
	})
	if rec := kubectl(t, "-n", releaseNS, "get", "azureassignedidentities", "-o", "jsonpath={.items[*].status.identities[*].lastError}"); !strings.Contains(rec, own.ClientID) {
		t.Errorf("no record's lastError names ARM's client ID %s: %q", own.ClientID, rec)
	}
	got, err := env.client.CoreV1().Pods("default").Get(t.Context(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.NodeName != "" || len(got.Spec.SchedulingGates) == 0 {
		t.Errorf("borrower scheduled to %q (gates %v): its gate should hold", got.Spec.NodeName, got.Spec.SchedulingGates)
	}
	if got := env.sb.Azure.Assigned(n.Pool.ID, victim.ClientID); !got {
		t.Errorf("the victim's identity left the pool")
	}
}

// testTwoPools: an identity needed on two pools stays on the pool whose pod
// remains and leaves the other one after the grace period.
func testTwoPools(t *testing.T) {
	id := userIdentity(t, "e2e-pools", "e2e-pools")
	n0, n1 := node(t, 0), node(t, 1)
	if n0.Pool.ID == n1.Pool.ID {
		t.Fatalf("nodes %s and %s share a pool", n0.Name, n1.Name)
	}
	labels := map[string]string{aadv1.BindingLabel: "e2e-pools"}
	demoPod{Name: "stays", Labels: labels, ClientID: id.ClientID, Node: n0.Name}.create(t)
	demoPod{Name: "goes", Labels: labels, ClientID: id.ClientID, Node: n1.Name}.create(t)
	for _, name := range []string{"stays", "goes"} {
		running(t, "default", name)
		waitFor(t, "default", name, userToken, time.Time{}, time.Minute)
	}
	if !env.sb.Azure.Assigned(n0.Pool.ID, id.ClientID) || !env.sb.Azure.Assigned(n1.Pool.ID, id.ClientID) {
		t.Fatalf("identity not on both pools")
	}
	gone := time.Now()
	deletePod(t, "default", "goes")
	var removed time.Duration
	framework.Eventually(t, gcGracePeriod+time.Minute, "identity removed from the pool of the deleted pod", func() error {
		if !env.sb.Azure.Assigned(n0.Pool.ID, id.ClientID) {
			t.Fatalf("identity removed from %s, where pod stays still runs", n0.Pool.Name)
		}
		if env.sb.Azure.Assigned(n1.Pool.ID, id.ClientID) {
			return fmt.Errorf("still on %s", n1.Pool.Name)
		}
		removed = time.Since(gone)
		return nil
	})
	t.Logf("identity left %s %s after its last pod there was deleted (grace period %s)", n1.Pool.Name, removed.Round(time.Second), gcGracePeriod)
	if removed < gcGracePeriod {
		t.Errorf("identity removed after %s, before the grace period %s", removed, gcGracePeriod)
	}
	waitFor(t, "default", "stays", userToken, time.Now(), 30*time.Second)
}

// testServicePrincipal: a type 1 identity whose secret is in a Secret; NMI
// gets its token from Azure AD.
func testServicePrincipal(t *testing.T) {
	sp := env.az.AAD.CreateServicePrincipal(env.sb.Azure.TenantID)
	kubectl(t, "-n", "default", "create", "secret", "generic", "e2e-sp", "--from-literal=clientSecret="+sp.Secret)
	t.Cleanup(func() { _, _ = kubectlIn("-n", "default", "delete", "secret", "e2e-sp", "--ignore-not-found") })
	applyIdentity(t, "e2e-sp", "e2e-sp", fmt.Sprintf("type: 1\n  tenantID: %s\n  clientID: %s\n  adEndpoint: %s\n  clientPassword:\n    name: e2e-sp\n    namespace: default",
		sp.TenantID, sp.AppID, env.az.AADAuthorityHost))
	demoPod{Name: "sp", Labels: map[string]string{aadv1.BindingLabel: "e2e-sp"}, ClientID: sp.AppID}.create(t)
	pod := running(t, "default", "sp")
	got := waitFor(t, "default", "sp", userToken, time.Time{}, time.Minute)
	if !strings.Contains(got.Line, sp.AppID) {
		t.Errorf("token logged for another client: %s", got.Line)
	}
	notReachedIMDS(t, pod)
}

// testAKSException: pods the chart's AzurePodIdentityException matches in
// kube-system get the node's own identity; other pods there do not.
func testAKSException(t *testing.T) {
	n := node(t, 0)
	demoPod{Name: "e2e-addon", Namespace: "kube-system", Labels: map[string]string{"kubernetes.azure.com/managedby": "aks"}, Node: n.Name}.create(t)
	demoPod{Name: "e2e-other", Namespace: "kube-system", Node: n.Name}.create(t)
	running(t, "kube-system", "e2e-addon")
	waitFor(t, "kube-system", "e2e-addon", defaultToken, time.Time{}, time.Minute)
	denied(t, running(t, "kube-system", "e2e-other"))
}

// testNMIRestart: while NMI's pod is replaced the interception stays in
// place and a pod calling all along never reaches IMDS nor gets a token.
func testNMIRestart(t *testing.T) {
	n := node(t, 0)
	demoPod{Name: "prober", Node: n.Name, Period: 100 * time.Millisecond}.create(t)
	prober := running(t, "default", "prober")
	old := componentPods(t, "nmi", n.Name)
	if len(old) != 1 {
		t.Fatalf("NMI pods on %s: %v", n.Name, old)
	}

	stop := watchInterception(n)
	kubectl(t, "-n", releaseNS, "delete", old[0], "--wait")
	framework.Eventually(t, 2*time.Minute, "a new NMI pod ready on "+n.Name, func() error {
		pods := componentPods(t, "nmi", n.Name)
		if len(pods) != 1 || pods[0] == old[0] {
			return fmt.Errorf("NMI pods: %v", pods)
		}
		_, err := kubectlIn("-n", releaseNS, "wait", "--for=condition=Ready", pods[0], "--timeout=1s")
		return err
	})
	time.Sleep(2 * time.Second) // the prober keeps calling the new NMI
	checks, gap := stop()
	t.Logf("%d rule checks during the restart", checks)
	if gap != nil {
		t.Error(gap)
	}
	never(t, "default", "prober", defaultToken)
	never(t, "default", "prober", userToken)
	notReachedIMDS(t, prober)
}

// testAssignerKilled: both assigner processes are killed (SIGKILL) while a
// burst of pods waits for its identity; once restarted, every pod ends
// Assigned and running.
func testAssignerKilled(t *testing.T) {
	env.az.ARM.SetWriteLatency(2 * time.Second)
	t.Cleanup(func() { env.az.ARM.SetWriteLatency(0) })
	id := userIdentity(t, "e2e-burst", "e2e-burst")
	writes := len(env.az.ARM.Writes())
	const burst = 20
	for i := range burst {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("burst-%02d", i), Namespace: "default", Labels: map[string]string{aadv1.BindingLabel: "e2e-burst"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: pauseImage}}},
		}
		if _, err := env.client.CoreV1().Pods("default").Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deletePod(t, "default", pod.Name) })
	}
	framework.Eventually(t, 30*time.Second, "an ARM write in flight", func() error {
		if len(env.az.ARM.Writes()) == writes {
			return fmt.Errorf("no PATCH yet")
		}
		return nil
	})
	killed := killAll(t, "/assigner")
	t.Logf("killed %d assigner processes with %d of the burst's ARM writes started", killed, len(env.az.ARM.Writes())-writes)
	if killed == 0 {
		t.Fatal("no assigner process found")
	}
	framework.Eventually(t, 3*time.Minute, "every burst pod Assigned and running", func() error {
		pods, err := env.client.CoreV1().Pods("default").List(t.Context(), metav1.ListOptions{LabelSelector: aadv1.BindingLabel + "=e2e-burst"})
		if err != nil {
			return err
		}
		var waiting []string
		for _, p := range pods.Items {
			if p.Annotations[aadv1.AnnotationAssignment] != "Assigned" || p.Status.Phase != corev1.PodRunning {
				waiting = append(waiting, fmt.Sprintf("%s (assignment %q, phase %s, node %q, gates %v)",
					p.Name, p.Annotations[aadv1.AnnotationAssignment], p.Status.Phase, p.Spec.NodeName, p.Spec.SchedulingGates))
			}
		}
		if len(pods.Items) != burst || len(waiting) > 0 {
			return fmt.Errorf("%d of %d pods not yet Assigned and running: %s", len(waiting), len(pods.Items), strings.Join(waiting, "; "))
		}
		return nil
	})
	for _, n := range env.sb.Nodes() {
		if !env.sb.Azure.Assigned(n.Pool.ID, id.ClientID) {
			t.Errorf("identity not on %s", n.Pool.Name)
		}
	}
	restarts := kubectl(t, "-n", releaseNS, "get", "pods", "-l", "app.kubernetes.io/component=assigner", "-o", "jsonpath={.items[*].status.containerStatuses[0].restartCount}")
	t.Logf("assigner restart counts: %s", restarts)
}

// killAll sends SIGKILL to every process running binary, as the OOM killer
// would, and returns how many there were.
func killAll(t *testing.T, binary string) int {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range procs {
		cmdline, err := os.ReadFile(f)
		if err != nil || !strings.HasPrefix(string(cmdline), binary+"\x00") {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// testWebhookDown: with no webhook pod, labelled pods are rejected (fail
// closed) and unlabelled ones still created (objectSelector).
func testWebhookDown(t *testing.T) {
	deploy := "deployment/" + release + "-webhook"
	kubectl(t, "-n", releaseNS, "scale", deploy, "--replicas=0")
	t.Cleanup(func() {
		_, _ = kubectlIn("-n", releaseNS, "scale", deploy, "--replicas=2")
		_, _ = kubectlIn("-n", releaseNS, "rollout", "status", deploy, "--timeout=2m")
	})
	framework.Eventually(t, time.Minute, "webhook pods gone", func() error {
		if pods := componentPods(t, "webhook", ""); len(pods) > 0 {
			return fmt.Errorf("left: %v", pods)
		}
		return nil
	})
	labelled := demoPod{Name: "rejected", Labels: map[string]string{aadv1.BindingLabel: "anything"}}.object()
	framework.Eventually(t, 30*time.Second, "labelled pod rejected", func() error {
		_, err := env.client.CoreV1().Pods("default").Create(t.Context(), labelled, metav1.CreateOptions{})
		if err == nil {
			deletePod(t, "default", labelled.Name)
			return fmt.Errorf("created with the webhook down")
		}
		if !strings.Contains(err.Error(), "failed calling webhook") {
			return fmt.Errorf("unexpected error: %w", err)
		}
		return nil
	})
	demoPod{Name: "unlabelled-while-down"}.create(t)
}

// TestUninstall: the pre-delete hooks stop NMI and run `nmi cleanup` on
// every node, so no aad-metadata chain is left anywhere.
func TestUninstall(t *testing.T) {
	installed(t)
	for _, n := range env.sb.Nodes() {
		if rules, err := natRules(n); err != nil || !intercepted(rules) {
			t.Fatalf("%s before uninstall: %v\n%s", n.Name, err, rules)
		}
	}
	if err := helmUninstall(); err != nil {
		t.Fatal(err)
	}
	for _, n := range env.sb.Nodes() {
		rules, err := natRules(n)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(rules, "aad-metadata") {
			t.Errorf("%s still has the aad-metadata chain:\n%s", n.Name, rules)
		}
	}
	framework.Eventually(t, time.Minute, "the release's pods gone", func() error {
		out := kubectl(t, "-n", releaseNS, "get", "pods", "-l", "app.kubernetes.io/instance="+release, "-o", "name")
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("left: %s", out)
		}
		return nil
	})
	// Nor a certificate: cert-manager's objects go with the release, and the
	// Secrets cert-manager issued (which it never deletes) with them.
	kinds := "certificates.cert-manager.io,issuers.cert-manager.io,certificaterequests.cert-manager.io,secrets"
	left := kubectl(t, "-n", releaseNS, "get", kinds, "-o", "name")
	for _, name := range strings.Fields(left) {
		if strings.Contains(name, "/"+webhookName) {
			t.Errorf("helm uninstall left %s", name)
		}
	}
}

// nodeOf returns the simulated node a pod runs on.
func nodeOf(t *testing.T, pod *corev1.Pod) *sandbox.Node {
	t.Helper()
	for _, n := range env.sb.Nodes() {
		if n.Name == pod.Spec.NodeName {
			return n
		}
	}
	t.Fatalf("pod %s/%s is on %q, not a sandbox node", pod.Namespace, pod.Name, pod.Spec.NodeName)
	return nil
}

// notReachedIMDS fails if anything but NMI, from the node's own addresses,
// ever called the pod's node's IMDS: every pod's call goes through NMI.
func notReachedIMDS(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	n := nodeOf(t, pod)
	for ip, calls := range n.IMDSCallers() {
		if ip != n.IP && ip != sandbox.MetadataIP.String() {
			t.Errorf("IMDS of %s called %d times from %s, not from the node (pod %s/%s has %s)", n.Name, calls, ip, pod.Namespace, pod.Name, pod.Status.PodIP)
		}
	}
}
