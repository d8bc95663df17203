//go:build e2e

// Package realnode_test runs a real node, kubelet with containerd, runc and
// the CNI bridge, in a network namespace the test creates, against the
// test control plane, and a pod of the project's offline-built demo image
// on it. It is the first step of running the e2e suite on real nodes; see
// docs/sandbox.md for what a real kubelet needs on this machine.
package realnode_test

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

const (
	envNodeName = "AADPI_REALNODE_NAME"
	// envImages is the directory of the image archives, built before the
	// node's namespace is entered: building may fetch .debs from the
	// Debian archive, which the namespace cannot reach.
	envImages = "AADPI_REALNODE_IMAGES"
	nodeIP    = "10.198.0.1"
	podSubnet = "10.244.0.0/24"
	// Names the images get from hack/images in this test.
	registry = "test.invalid/aadpi"
	tag      = "realnode"
)

func TestRealNode(t *testing.T) {
	if testns.InChild() {
		runNode(t, os.Getenv(envNodeName))
		return
	}
	framework.RequireRoot(t)
	if _, err := nodeAssets(); err != nil {
		t.Fatal(err)
	}
	images := t.TempDir()
	buildImages(t, images)
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	name := testns.Prefix + "rn-" + hex.EncodeToString(suffix)
	node, err := testns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		node.Close()
		if err := testns.Delete(name); err != nil {
			t.Errorf("deleting netns %s: %v", name, err)
		}
	})
	if err := node.Do(func(ns.NetNS) error { return testns.NodeUplink(net.ParseIP(nodeIP)) }); err != nil {
		t.Fatal(err)
	}
	testns.RerunIn(t, node, 10*time.Minute, envNodeName+"="+name, envImages+"="+images)
}

// nodeAssets is where `make node-binaries` put kubelet, containerd and
// the CNI plugins.
func nodeAssets() (string, error) {
	dir := os.Getenv("AADPI_NODE_ASSETS")
	if dir == "" {
		home, _ := os.UserHomeDir()
		matches, _ := filepath.Glob(filepath.Join(home, ".cache", "aad-pod-identity", "node-*", ".done"))
		if len(matches) == 0 {
			return "", errors.New("no node binaries: run `make node-binaries`")
		}
		dir = filepath.Dir(matches[len(matches)-1])
	}
	for _, b := range []string{"kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "cni/bridge"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("node binaries in %s: %w (run `make node-binaries`)", dir, err)
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return "", fmt.Errorf("runc: %w (`make deps` installs it)", err)
	}
	return dir, nil
}

// runNode runs inside the node namespace: control plane, containerd,
// kubelet, then the pod.
func runNode(t *testing.T, name string) {
	assets, err := nodeAssets()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	env, cfg := framework.StartEnvironment(t, framework.Options{})
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := writeKubeconfig(t, env, dir)
	images := []string{filepath.Join(os.Getenv(envImages), "pause.tar"), filepath.Join(os.Getenv(envImages), "demo.tar")}

	cgroups := nodeCgroups(t, name)
	sock := startContainerd(t, assets, dir)
	for _, img := range images {
		out, err := exec.Command(filepath.Join(assets, "ctr"), "-a", sock, "-n", "k8s.io", "images", "import", img).CombinedOutput()
		if err != nil {
			t.Fatalf("importing %s: %v: %s", img, err, out)
		}
	}
	startKubelet(t, assets, dir, name, kubeconfig, sock, cgroups)

	ctx := t.Context()
	framework.Eventually(t, 2*time.Minute, "node "+name+" Ready", func() error {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("conditions %v", n.Status.Conditions)
	})
	// No controller-manager here: the namespace's ServiceAccount by hand.
	if _, err := client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo"},
		Spec: corev1.PodSpec{
			NodeName:                     name, // no scheduler either
			AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{
				Name: "demo", Image: registry + "/demo:" + tag, ImagePullPolicy: corev1.PullNever,
				Args: []string{"--subscription-id=s", "--resource-group=rg", "--identity-client-id=00000000-0000-0000-0000-000000000000", "--period=1s"},
			}},
		},
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	framework.Eventually(t, 2*time.Minute, "demo pod Running on the real node", func() error {
		got, err = client.CoreV1().Pods("default").Get(ctx, "demo", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.Status.Phase != corev1.PodRunning || got.Status.PodIP == "" {
			return fmt.Errorf("phase %s, IP %q, containers %+v", got.Status.Phase, got.Status.PodIP, got.Status.ContainerStatuses)
		}
		return nil
	})
	if _, subnet, _ := net.ParseCIDR(podSubnet); !subnet.Contains(net.ParseIP(got.Status.PodIP)) {
		t.Errorf("pod IP %s not from the CNI bridge's %s", got.Status.PodIP, podSubnet)
	}
	sandboxHasIP(t, sock, got)
	cniResultNamesBridgePort(t, got.Status.PodIP)
	// The demo runs as the image's user and logs its first round (it
	// cannot reach any Azure here).
	framework.Eventually(t, time.Minute, "the demo's log", func() error {
		logs, _ := filepath.Glob(filepath.Join(dir, "pod-logs", "default_demo_*", "demo", "*.log"))
		for _, l := range logs {
			if b, _ := os.ReadFile(l); len(b) > 0 {
				t.Logf("demo log: %s", firstLine(b))
				return nil
			}
		}
		return errors.New("no log yet")
	})
	if err := client.CoreV1().Pods("default").Delete(ctx, "demo", metav1.DeleteOptions{GracePeriodSeconds: new(int64(1))}); err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, time.Minute, "demo pod gone", func() error {
		if _, err := client.CoreV1().Pods("default").Get(ctx, "demo", metav1.GetOptions{}); err == nil {
			return errors.New("still there")
		}
		return nil
	})
}

// cniResultNamesBridgePort checks what NMI's --cni-cache-dir relies on, on
// the real runtime and bridge plugin: containerd caches the plugin's result
// under /var/lib/cni/results, and the result holding the pod's address names,
// outside the sandbox, an interface of the node that is a port of the bridge.
func cniResultNamesBridgePort(t *testing.T, podIP string) {
	t.Helper()
	files, _ := filepath.Glob("/var/lib/cni/results/realnode-*")
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
			link, err := netlink.LinkByName(iface.Name)
			if err != nil {
				t.Fatalf("%s names %s: %v", f, iface.Name, err)
			}
			if master := link.Attrs().MasterIndex; master != 0 {
				if br, err := netlink.LinkByIndex(master); err == nil && br.Attrs().Name == "cni0" {
					t.Logf("CNI result %s: pod %s on bridge port %s", filepath.Base(f), podIP, iface.Name)
					return
				}
			}
		}
		t.Fatalf("%s holds pod %s but no port of cni0: %s", f, podIP, raw)
	}
	t.Fatalf("no CNI result for pod %s among %v", podIP, files)
}

// sandboxHasIP checks what NMI's --cri-socket relies on, on the real
// runtime: the pod's ready sandbox is found by the kubelet's pod UID label
// and reports the pod's IP.
func sandboxHasIP(t *testing.T, sock string, pod *corev1.Pod) {
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
	st, err := rt.PodSandboxStatus(t.Context(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: list.GetItems()[0].GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if ip := st.GetStatus().GetNetwork().GetIp(); ip != pod.Status.PodIP {
		t.Errorf("the runtime reports IP %q for the pod's sandbox, the API %q", ip, pod.Status.PodIP)
	}
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(string(b), "\n")
	return line
}

func writeKubeconfig(t *testing.T, env *envtest.Environment, dir string) string {
	t.Helper()
	user, err := env.AddUser(envtest.User{Name: "system:node:kubelet", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// buildImages builds the pause and demo images as OCI archives into out,
// from the machine's own namespace: a cold .deb cache is filled from the
// Debian archive.
func buildImages(t *testing.T, out string) {
	t.Helper()
	home, _ := os.UserHomeDir()
	cmd := exec.Command("go", "run", "./hack/images", "--out", out, "--images", "pause,demo", "--registry", registry, "--version", tag,
		"--deb-cache", filepath.Join(home, ".cache", "aad-pod-identity", "debs"))
	cmd.Dir = framework.RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building images: %v: %s", err, b)
	}
}

// process starts a node daemon and stops it, and everything it started,
// when the test ends.
func process(t *testing.T, log string, name string, args ...string) {
	t.Helper()
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("%s:\n%s", filepath.Base(log), tail(string(b), 40))
		}
	})
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// startContainerd starts containerd with everything under dir: its root,
// state, socket, the runc root and the pods' network namespaces, so that
// nothing of the node is left on the machine. It returns the socket.
func startContainerd(t *testing.T, assets, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "containerd.sock")
	cniConf := filepath.Join(dir, "cni")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		t.Fatal(err)
	}
	conflist := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"realnode","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}`, filepath.Join(dir, "ipam"), podSubnet)
	if err := os.WriteFile(filepath.Join(cniConf, "10-bridge.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	runc, _ := exec.LookPath("runc")
	// restrict_oom_score_adj: this machine withholds CAP_SYS_RESOURCE, so
	// runc cannot lower a sandbox's oom_score_adj (docs/sandbox.md).
	config := fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = [%[4]q]
  conf_dir = %[5]q
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  BinaryName = %[6]q
  Root = %[7]q
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = %[8]q
`, filepath.Join(dir, "containerd", "root"), filepath.Join(dir, "containerd", "state"), sock, filepath.Join(assets, "cni"), cniConf,
		runc, filepath.Join(dir, "runc"), registry+"/pause:"+tag)
	path := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killNodeProcesses(dir) })
	process(t, filepath.Join(dir, "containerd.log"), filepath.Join(assets, "containerd"), "--config", path)
	framework.Eventually(t, 30*time.Second, "containerd's socket", func() error {
		_, err := os.Stat(sock)
		return err
	})
	return sock
}

// killNodeProcesses ends the shims containerd started (they outlive it by
// design; the containers are in the node's cgroups, emptied after) and
// unmounts the pods' network namespaces kept under dir.
func killNodeProcesses(dir string) {
	out, _ := exec.Command("pgrep", "-f", dir).Output()
	for _, pid := range strings.Fields(string(out)) {
		_ = exec.Command("kill", "-9", "--", pid).Run()
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			_ = exec.Command("umount", "-l", f[4]).Run()
		}
	}
}

// nodeCgroups creates the node's cgroup root in every v1 hierarchy (the
// kubelet wants it to exist) and removes it, with what the kubelet made
// under it, when the test ends. It returns the root.
func nodeCgroups(t *testing.T, name string) string {
	t.Helper()
	root := "/" + name
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	var dirs []string
	for _, procs := range hierarchies {
		h := filepath.Dir(procs)
		d := filepath.Join(h, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(h, f))
				if err == nil {
					err = os.WriteFile(filepath.Join(d, f), b, 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		dirs = append(dirs, d)
	}
	t.Cleanup(func() {
		for _, d := range dirs {
			removeCgroup(t, d)
		}
	})
	return root
}

// removeCgroup kills what is left in a cgroup tree and removes it.
func removeCgroup(t *testing.T, dir string) {
	var subdirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			subdirs = append(subdirs, p)
		}
		return nil
	})
	for i := len(subdirs) - 1; i >= 0; i-- {
		d := subdirs[i]
		for range 50 {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, pid := range strings.Fields(string(b)) {
				_ = exec.Command("kill", "-9", pid).Run()
			}
			if err := os.Remove(d); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s left behind", d)
		}
	}
}

func startKubelet(t *testing.T, assets, dir, name, kubeconfig, sock, cgroupRoot string) {
	t.Helper()
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: %[1]s
containerRuntimeEndpoint: unix://%[2]s
podLogsDir: %[3]s
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
address: %[4]s
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
staticPodPath: ""
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
localStorageCapacityIsolation: false
`, cgroupRoot, sock, filepath.Join(dir, "pod-logs"), nodeIP)
	path := filepath.Join(dir, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	process(t, filepath.Join(dir, "kubelet.log"), filepath.Join(assets, "kubelet"), "--config", path, "--kubeconfig", kubeconfig,
		"--root-dir", filepath.Join(dir, "kubelet"), "--hostname-override", name, "--node-ip", nodeIP)
}
