//go:build e2e

package suite

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// TestClusterNetwork proves, on the real nodes, that kube-proxy in each
// mode and CoreDNS serve pods while NMI's interception keeps its place: for
// each mode, node 0's kube-proxy is restarted in it while Services change
// (resyncs) and the nat and filter rules are checked every 50 ms; then a
// pod on that node reaches the kubernetes Service, a ClusterIP Service by
// name and the fake ARM by its public name, a labelled pod gets its token
// through NMI, and no pod ever reached IMDS.
func TestClusterNetwork(t *testing.T) {
	installed(t)
	healthService(t)
	for _, mode := range []string{sandbox.KubeProxyIPTables, sandbox.KubeProxyNFTables} {
		t.Run(mode, func(t *testing.T) { testKubeProxyMode(t, mode) })
	}
}

// healthService is a ClusterIP Service to the CoreDNS pods' health port,
// plain HTTP that any client can check.
func healthService(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "e2e-dns-health", Namespace: metav1.NamespaceSystem},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"k8s-app": "kube-dns"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	if _, err := env.client.CoreV1().Services(svc.Namespace).Create(t.Context(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = kubectlIn("-n", svc.Namespace, "delete", "service", svc.Name) })
}

func testKubeProxyMode(t *testing.T, mode string) {
	n := node(t, 0)
	base := sandbox.KubeProxyModeFromEnv()
	restored := mode == base
	t.Cleanup(func() {
		if restored {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.RestartKubeProxy(ctx, base); err != nil {
			t.Errorf("kube-proxy back in %s mode: %v", base, err)
		}
	})
	demoPod{Name: "kp-prober", Node: n.Name, Period: 100 * time.Millisecond}.create(t)
	prober := running(t, "default", "kp-prober")

	stop := restartKubeProxy(t, n, base, mode, func() { churnServices(t, 3) })
	proxiesIn(t, n, mode)
	churnServices(t, 3)
	checkPodNetwork(t, n)
	id := userIdentity(t, "e2e-kp-"+mode, "e2e-kp-"+mode)
	demoPod{Name: "kp-labelled", Labels: map[string]string{aadv1.BindingLabel: "e2e-kp-" + mode}, ClientID: id.ClientID, Node: n.Name}.create(t)
	waitFor(t, "default", "kp-labelled", userToken, time.Time{}, time.Minute)
	checks, gap := stop()
	t.Logf("%d rule checks in %s mode", checks, mode)
	if gap != nil {
		t.Error(gap)
	}
	never(t, "default", "kp-prober", defaultToken)
	notReachedIMDS(t, prober)

	if mode == base {
		return
	}
	restored = true
	stop = restartKubeProxy(t, n, mode, base, func() {})
	if _, gap := stop(); gap != nil {
		t.Error(gap)
	}
	checkPodNetwork(t, n)
}

// restartKubeProxy runs before, then restarts n's kube-proxy, which ran in
// mode from, in mode to, while the node's rules are checked every 50 ms
// until stop is called: NMI's interception is never missing and its jumps
// stay first. Except that kube-proxy starting in iptables mode on a node
// without its jumps (from nftables) prepends them; NMI's periodic check
// (the chart's nmi.syncPeriod, 60 s) puts its own first again, which this
// then waits for.
func restartKubeProxy(t *testing.T, n *sandbox.Node, from, to string, before func()) (stop func() (checks int, gap error)) {
	prepends := to == sandbox.KubeProxyIPTables && from != to
	if prepends {
		stop = watchInterception(n)
	} else {
		stop = watchRules(n, interceptionFirst)
	}
	t.Cleanup(func() { _, _ = stop() }) // when the test fails before its caller stops it
	before()
	if err := n.RestartKubeProxy(t.Context(), to); err != nil {
		t.Fatal(err)
	}
	if !prepends {
		return stop
	}
	restarted := time.Now()
	framework.Eventually(t, 90*time.Second, "NMI's jumps first again after kube-proxy started in "+to+" mode", func() error {
		nat, err := natRules(n)
		if err != nil {
			return err
		}
		filter, err := tableRules(n, "filter")
		if err != nil {
			return err
		}
		return interceptionFirst(nat, filter)
	})
	t.Logf("NMI's jumps first %v after kube-proxy synced in %s mode", time.Since(restarted).Round(time.Millisecond), to)
	return stop
}

// proxiesIn checks that the node's Service rules are those of mode only:
// starting in one mode, kube-proxy removes the other's.
func proxiesIn(t *testing.T, n *sandbox.Node, mode string) {
	nat, err := natRules(n)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := exec.Command("ip", "netns", "exec", n.NetNS, "nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables in %s: %v: %s", n.NetNS, err, tables)
	}
	nft := strings.Contains(string(tables), "table ip kube-proxy")
	if iptables := strings.Contains(nat, "-j KUBE-SERVICES"); iptables != (mode == sandbox.KubeProxyIPTables) || nft != (mode == sandbox.KubeProxyNFTables) {
		t.Errorf("kube-proxy in %s mode: iptables rules %t, nftables table %t", mode, iptables, nft)
	}
}

// churnServices creates and deletes count Services, each a kube-proxy sync
// on every node.
func churnServices(t *testing.T, count int) {
	for i := range count {
		name := fmt.Sprintf("e2e-churn-%d", i)
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Port: 80}}}}
		if _, err := env.client.CoreV1().Services("default").Create(t.Context(), svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // kube-proxy's minimum sync interval
		if err := env.client.CoreV1().Services("default").Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// kubectlImage is the chart's hook image on every node; its kubectl is the
// pods' HTTP client, with the pure Go resolver reading the pod's resolv.conf.
const kubectlImage = "registry.k8s.io/kubectl:v1.37.2"

// checkPodNetwork runs a pod on n whose containers reach the kubernetes
// Service (in-cluster config: 10.0.0.1:443), the health Service by its
// short name (search path, CoreDNS, ClusterIP to the CoreDNS pods) and the
// fake ARM by its public name (CoreDNS's hosts, TLS verified by the image's
// bundle), and checks what each printed.
func checkPodNetwork(t *testing.T, n *sandbox.Node) {
	// Any token: without credentials kubectl prompts for a password.
	plain := []string{"--kubeconfig=/dev/null", "--token=none"}
	cases := []struct {
		name  string
		args  []string
		check func(string) error
	}{
		{"kubernetes", []string{"get", "--raw", "/version"}, contains(`"gitVersion"`)},
		{"service", append(plain, "--server=http://e2e-dns-health.kube-system", "get", "--raw", "/health"), contains("OK")},
		// -v=6 logs the answer; the body is the fake ARM's.
		{"arm", append(plain, "--server=https://management.azure.com", "get", "--raw", "/", "-v=6"),
			contains(`url="https://management.azure.com/" status="404 Not Found"`)},
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "kp-client", Namespace: "default"}, Spec: corev1.PodSpec{
		RestartPolicy: corev1.RestartPolicyNever,
		NodeSelector:  map[string]string{"kubernetes.io/hostname": n.Name},
	}}
	for _, c := range cases {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c.name, Image: kubectlImage, Args: c.args})
	}
	if _, err := env.client.CoreV1().Pods("default").Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer deletePod(t, pod.Namespace, pod.Name)
	framework.Eventually(t, 2*time.Minute, "pod kp-client finished", func() error {
		got, err := env.client.CoreV1().Pods("default").Get(t.Context(), pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, s := range got.Status.ContainerStatuses {
			if s.State.Terminated == nil {
				return fmt.Errorf("container %s: %+v", s.Name, s.State)
			}
		}
		if len(got.Status.ContainerStatuses) != len(cases) {
			return fmt.Errorf("phase %s", got.Status.Phase)
		}
		return nil
	})
	for _, c := range cases {
		out, _ := kubectlIn("-n", "default", "logs", pod.Name, "-c", c.name)
		if err := c.check(out); err != nil {
			t.Errorf("%s from a pod on %s: %v:\n%s", c.name, n.Name, err, out)
		}
	}
}

func contains(want string) func(string) error {
	return func(out string) error {
		if !strings.Contains(out, want) {
			return fmt.Errorf("no %q", want)
		}
		return nil
	}
}

// interceptionFirst checks that NMI's jumps are the first rules of their
// chains, ahead of kube-proxy's, and that the interception is in place.
func interceptionFirst(nat, filter string) error {
	if !intercepted(nat) {
		return fmt.Errorf("interception missing:\n%s", nat)
	}
	for _, c := range []struct{ rules, chain, want string }{
		{nat, "PREROUTING", "-j aad-metadata"},
		{filter, "INPUT", "-j aad-metadata-guard"},
	} {
		if first := firstRule(c.rules, c.chain); first != c.want {
			return fmt.Errorf("first rule of %s %q, want %q:\n%s", c.chain, first, c.want, c.rules)
		}
	}
	return nil
}

// firstRule is the first rule of chain in `iptables -S` output, without
// "-A chain ".
func firstRule(rules, chain string) string {
	for _, line := range strings.Split(rules, "\n") {
		if r, ok := strings.CutPrefix(line, "-A "+chain+" "); ok {
			return r
		}
	}
	return ""
}
