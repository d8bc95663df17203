//go:build e2e

package suite

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// TestRealNode proves on the real kubelet, containerd and runc what the
// chart asks of the node: its security contexts, capabilities and probes,
// a container restart by the kubelet, and what NMI's optional CRI and CNI
// checks assume of the runtime.
func TestRealNode(t *testing.T) {
	installed(t)
	for _, c := range []suiteCase{
		{"webhook and assigner run non-root on a read-only root and turn Ready", testNonRootComponents},
		{"NMI has only NET_ADMIN and NET_RAW; killed, the kubelet restarts it with no gap in interception", testNMIContainerRestart},
		{"a pod running as another user gets its token; a host-network pod does not", testPodUsers},
		{"a restarted NMI pod removes the node's startup taint", testStartupTaint},
		{"the runtime and the CNI cache know the pod's address as NMI's checks assume", testRuntimeKnowsPod},
		{"NMI confirms callers with the node's containerd: a pod the API gives another pod's IP gets nothing", testRuntimeConfirmsCallers},
	} {
		t.Run(c.name, c.run)
	}
}

// procStatus is what /proc/<pid>/status and mountinfo tell about a process.
type procStatus struct {
	pid     int
	uid     string
	capEff  uint64
	rootRO  bool
	netnsID string
}

// processes lists the processes whose command line starts with binary.
func processes(t *testing.T, binary string) []procStatus {
	t.Helper()
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []procStatus
	for _, f := range cmdlines {
		cmdline, err := os.ReadFile(f)
		if err != nil || !strings.HasPrefix(string(cmdline), binary+"\x00") {
			continue
		}
		dir := filepath.Dir(f)
		pid, _ := strconv.Atoi(filepath.Base(dir))
		p := procStatus{pid: pid}
		status, _ := os.ReadFile(filepath.Join(dir, "status"))
		for _, line := range strings.Split(string(status), "\n") {
			k, v, _ := strings.Cut(line, ":")
			switch k {
			case "Uid":
				p.uid = strings.Fields(v)[1] // effective
			case "CapEff":
				p.capEff, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			}
		}
		mounts, _ := os.ReadFile(filepath.Join(dir, "mountinfo"))
		for _, line := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) > 5 && f[4] == "/" {
				p.rootRO = slices.Contains(strings.Split(f[5], ","), "ro")
			}
		}
		p.netnsID, _ = os.Readlink(filepath.Join(dir, "ns", "net"))
		out = append(out, p)
	}
	return out
}

func testNonRootComponents(t *testing.T) {
	for _, c := range []string{"webhook", "assigner"} {
		kubectl(t, "-n", releaseNS, "wait", "--for=condition=Ready", "pod", "-l", "app.kubernetes.io/component="+c, "--timeout=2m")
		procs := processes(t, "/"+c)
		if len(procs) == 0 {
			t.Fatalf("no %s process", c)
		}
		for _, p := range procs {
			if p.uid != "65532" || !p.rootRO || p.capEff != 0 {
				t.Errorf("%s (pid %d): uid %s, read-only root %v, effective capabilities %#x; want 65532, true, 0", c, p.pid, p.uid, p.rootRO, p.capEff)
			}
		}
	}
}

// netAdminRaw is CAP_NET_ADMIN | CAP_NET_RAW.
const netAdminRaw = 1<<12 | 1<<13

func testNMIContainerRestart(t *testing.T) {
	n := node(t, 0)
	nsFile, err := os.Stat(testns.Path(n.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	nodeNS := fmt.Sprintf("net:[%d]", nsFile.Sys().(*syscall.Stat_t).Ino)
	var nmi *procStatus
	for _, p := range processes(t, "/nmi") {
		if p.netnsID == nodeNS {
			nmi = &p
		}
	}
	if nmi == nil {
		t.Fatalf("no NMI process in %s", n.NetNS)
	}
	if nmi.capEff != netAdminRaw {
		t.Errorf("NMI's effective capabilities %#x, want NET_ADMIN and NET_RAW only (%#x)", nmi.capEff, netAdminRaw)
	}
	if rules, err := natRules(n); err != nil || !intercepted(rules) {
		t.Fatalf("no interception on %s before the kill: %v\n%s", n.Name, err, rules)
	}
	pods := componentPods(t, "nmi", n.Name)
	restarts := func() int32 {
		p, err := env.client.CoreV1().Pods(releaseNS).Get(t.Context(), strings.TrimPrefix(pods[0], "pod/"), metav1.GetOptions{})
		if err != nil {
			return -1
		}
		if len(p.Status.ContainerStatuses) == 0 {
			return -1
		}
		return p.Status.ContainerStatuses[0].RestartCount
	}
	before := restarts()

	stop := watchInterception(n)
	if err := syscall.Kill(nmi.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, 2*time.Minute, "NMI restarted by the kubelet and Ready", func() error {
		if got := restarts(); got <= before {
			return fmt.Errorf("restart count %d", got)
		}
		_, err := kubectlIn("-n", releaseNS, "wait", "--for=condition=Ready", pods[0], "--timeout=1s")
		return err
	})
	checks, gap := stop()
	t.Logf("%d rule checks while NMI was killed and restarted", checks)
	if gap != nil {
		t.Error(gap)
	}
}

func testPodUsers(t *testing.T) {
	id := userIdentity(t, "e2e-users", "e2e-users")
	labels := map[string]string{aadv1.BindingLabel: "e2e-users"}
	demoPod{Name: "other-user", Labels: labels, ClientID: id.ClientID, Modify: func(p *corev1.Pod) {
		p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: new(int64(1000)), RunAsGroup: new(int64(1000))}
	}}.create(t)
	waitFor(t, "default", "other-user", userToken, time.Time{}, time.Minute)

	// A host-network pod shares the node's address, so NMI cannot tell it
	// from the node and refuses it (docs/security.md); it asks NMI where
	// NMI listens (the node's address), as its traffic to 169.254.169.254
	// is not redirected.
	n := node(t, 0)
	demoPod{Name: "host-network", Labels: labels, ClientID: id.ClientID, Node: n.Name, Modify: func(p *corev1.Pod) {
		p.Spec.HostNetwork = true
		p.Spec.Containers[0].Args = append(p.Spec.Containers[0].Args, "--metadata-endpoint=http://"+n.IP+":2579")
	}}.create(t)
	pod := running(t, "default", "host-network")
	// Its first refusal: NMI makes an unknown caller wait (5 s) per request.
	first := waitFor(t, pod.Namespace, pod.Name, defaultError, time.Time{}, 2*time.Minute)
	if !strings.Contains(first.Line, "403") || !strings.Contains(first.Line, "host-network pods cannot") {
		t.Errorf("refusal is not NMI's 403 for host-network callers: %s", first.Line)
	}
	never(t, pod.Namespace, pod.Name, defaultToken)
	never(t, pod.Namespace, pod.Name, userToken)
}

func testStartupTaint(t *testing.T) {
	n := node(t, 1)
	taint := aadv1.NMINotReadyTaint + ":NoSchedule"
	kubectl(t, "taint", "node", n.Name, taint)
	t.Cleanup(func() { _, _ = kubectlIn("taint", "node", n.Name, taint+"-") })
	old := componentPods(t, "nmi", n.Name)
	kubectl(t, "-n", releaseNS, "delete", old[0], "--wait")
	framework.Eventually(t, 2*time.Minute, "the new NMI pod removes the taint", func() error {
		got, err := env.client.CoreV1().Nodes().Get(t.Context(), n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, tt := range got.Spec.Taints {
			if tt.Key == aadv1.NMINotReadyTaint {
				return fmt.Errorf("taints %v", got.Spec.Taints)
			}
		}
		return nil
	})
	pods := componentPods(t, "nmi", n.Name)
	if len(pods) != 1 || pods[0] == old[0] {
		t.Errorf("NMI pods on %s: %v (was %v)", n.Name, pods, old)
	}
}

func testRuntimeKnowsPod(t *testing.T) {
	n := node(t, 0)
	demoPod{Name: "runtime", Node: n.Name}.create(t)
	pod := running(t, "default", "runtime")
	sandboxHasIP(t, n.CRISocket, pod)
	cniResultNamesBridgePort(t, n, pod.Status.PodIP)
}

// testRuntimeConfirmsCallers: the chart gives NMI the node's containerd
// socket, and NMI confirms every caller with it. A pod admitted for an
// identity gets its token, which with nmi.criSocket NMI serves only to a
// caller the runtime confirms; then the API is made to give that pod's IP to
// another pod and the other way round, as NMI's cache would show them after
// an IP changed hands unseen: the other pod is never served the identity,
// and NMI's log shows the runtime refusing the caller the cache named
// (ip_not_confirmed). The kubelet restores the statuses within its status
// sync (10 s), so they are swapped again every half second for a while.
func testRuntimeConfirmsCallers(t *testing.T) {
	n := node(t, 0)
	nmiPod := componentPods(t, "nmi", n.Name)[0]
	if cfg := kubectl(t, "-n", releaseNS, "get", "configmap", release+"-config", "-o", `jsonpath={.data.config\.yaml}`); !strings.Contains(cfg, "criSocket: ") {
		t.Fatalf("NMI on %s runs without nmi.criSocket: %s", n.Name, cfg)
	}
	id := userIdentity(t, "e2e-runtime", "e2e-runtime")
	demoPod{Name: "runtime-owner", Labels: map[string]string{aadv1.BindingLabel: "e2e-runtime"}, ClientID: id.ClientID, Node: n.Name}.create(t)
	demoPod{Name: "runtime-other", ClientID: id.ClientID, Node: n.Name}.create(t)
	owner, other := running(t, "default", "runtime-owner"), running(t, "default", "runtime-other")
	waitFor(t, owner.Namespace, owner.Name, userToken, time.Time{}, time.Minute)

	swapped := time.Now()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			for _, p := range []struct{ pod, ip string }{{owner.Name, other.Status.PodIP}, {other.Name, owner.Status.PodIP}} {
				patch := fmt.Sprintf(`{"status":{"podIP":%q,"podIPs":[{"ip":%q}]}}`, p.ip, p.ip)
				if _, err := env.client.CoreV1().Pods("default").Patch(t.Context(), p.pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
					t.Errorf("giving pod %s IP %s: %v", p.pod, p.ip, err)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	framework.Eventually(t, 2*time.Minute, "NMI refusing "+other.Name+" as "+owner.Name+" (ip_not_confirmed)", func() error {
		logs, err := kubectlIn("-n", releaseNS, "logs", nmiPod, "--since-time="+swapped.UTC().Format(time.RFC3339))
		if err != nil {
			return err
		}
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, "ip_not_confirmed") && strings.Contains(line, other.Status.PodIP+":") {
				return nil
			}
		}
		return errors.New("no such refusal in NMI's log yet")
	})
	close(stop)
	<-done
	never(t, other.Namespace, other.Name, userToken)
	// With the kubelet's statuses back, the owner is served again.
	waitFor(t, owner.Namespace, owner.Name, userToken, time.Now(), 2*time.Minute)
}

// sandboxHasIP checks what NMI's nmi.criSocket relies on: the pod's ready
// sandbox is found by the kubelet's pod UID label and reports the pod's IP.
func sandboxHasIP(t *testing.T, sock string, pod *corev1.Pod) {
	t.Helper()
	if ip := readySandbox(t, sock, pod, false).GetStatus().GetNetwork().GetIp(); ip != pod.Status.PodIP {
		t.Errorf("the runtime reports IP %q for the pod's sandbox, the API %q", ip, pod.Status.PodIP)
	}
}

// readySandbox returns the status of the pod's one ready sandbox, found by
// the kubelet's pod UID label; verbose adds the runtime's own information
// (containerd's names the sandbox's process).
func readySandbox(t *testing.T, sock string, pod *corev1.Pod, verbose bool) *runtimeapi.PodSandboxStatusResponse {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rt.ListPodSandbox(t.Context(), &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(pod.UID)},
	}})
	if err != nil || len(list.GetItems()) != 1 {
		t.Fatalf("ready sandboxes of pod %s: %v, %v", pod.UID, list.GetItems(), err)
	}
	st, err := rt.PodSandboxStatus(t.Context(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: list.GetItems()[0].GetId(), Verbose: verbose})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// cniResultNamesBridgePort checks what NMI's nmi.cniCacheDir relies on:
// containerd caches the bridge plugin's result under /var/lib/cni/results,
// and the result holding the pod's address names, outside the pod, an
// interface of the node that is a port of the bridge.
func cniResultNamesBridgePort(t *testing.T, n *sandbox.Node, podIP string) {
	t.Helper()
	files, _ := filepath.Glob("/var/lib/cni/results/" + n.NetNS + "-*")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var entry struct {
			Result struct {
				Interfaces []struct{ Name, Sandbox string }
				IPs        []struct{ Address string }
			}
		}
		if err := json.Unmarshal(raw, &entry); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !slices.ContainsFunc(entry.Result.IPs, func(a struct{ Address string }) bool { return strings.HasPrefix(a.Address, podIP+"/") }) {
			continue
		}
		for _, iface := range entry.Result.Interfaces {
			if iface.Sandbox != "" {
				continue
			}
			if bridgePort(t, n, iface.Name) {
				t.Logf("CNI result %s: pod %s on bridge port %s", filepath.Base(f), podIP, iface.Name)
				return
			}
		}
		t.Fatalf("%s holds pod %s but no port of cni0: %s", f, podIP, raw)
	}
	t.Fatalf("no CNI result for pod %s among %v", podIP, files)
}

// bridgePort reports whether link is a port of cni0 in the node's namespace.
func bridgePort(t *testing.T, n *sandbox.Node, link string) bool {
	t.Helper()
	var port bool
	err := nodeNetNS(t, n).Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(link)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByIndex(l.Attrs().MasterIndex)
		port = err == nil && br.Attrs().Name == "cni0"
		return nil
	})
	if err != nil {
		t.Fatalf("link %s on %s: %v", link, n.Name, err)
	}
	return port
}
