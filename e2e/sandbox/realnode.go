package sandbox

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// NodeAssets finds kubelet, kube-proxy, containerd (with its shim and ctr),
// the CNI plugins and the static kubectl `make node-binaries` built, and checks runc
// is installed.
func NodeAssets() (string, error) {
	dir := os.Getenv("AADPI_NODE_ASSETS")
	if dir == "" {
		home, _ := os.UserHomeDir()
		matches, _ := filepath.Glob(filepath.Join(home, ".cache", "aad-pod-identity", "node-*", ".done"))
		if len(matches) == 0 {
			return "", errors.New("no node binaries: run `make node-binaries`")
		}
		dir = filepath.Dir(matches[len(matches)-1])
	}
	for _, b := range []string{"kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "cni/bridge", "static/kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("node binaries in %s: %w (run `make node-binaries`)", dir, err)
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return "", fmt.Errorf("runc: %w (`make deps` installs it)", err)
	}
	return dir, nil
}

// realNode is one node's kubelet and containerd, everything of it under dir
// and in its cgroups.
type realNode struct {
	sb      *Sandbox
	index   int
	name    string
	dir     string
	netns   ns.NetNS
	cgroups []string
	procs   []*process

	mu        sync.Mutex
	kubeProxy *process
}

// startRealNode starts containerd, imports the images and starts the
// kubelet inside the node's namespace, and waits until the Node is Ready.
func (s *Sandbox) startRealNode(ctx context.Context, netns ns.NetNS, i int, n *Node, providerID string, taints []corev1.Taint) (*realNode, error) {
	r := &realNode{sb: s, index: i, name: n.Name, dir: s.nodeDir(n.Name), netns: netns}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return r, err
	}
	if err := r.makeCgroups(); err != nil {
		return r, err
	}
	sock, err := r.startContainerd(ctx)
	if err != nil {
		return r, err
	}
	n.CRISocket = sock
	if err := importImages(ctx, filepath.Join(s.opts.NodeAssets, "ctr"), sock, s.opts.NodeImages); err != nil {
		return r, fmt.Errorf("node %s: %w", n.Name, err)
	}
	kubeconfig, err := r.writeKubeconfig()
	if err != nil {
		return r, err
	}
	if err := r.startKubelet(sock, kubeconfig, providerID, n.Pool.Name, taints); err != nil {
		return r, err
	}
	if err := r.waitReady(ctx); err != nil {
		return r, err
	}
	return r, r.startKubeProxy(ctx, s.opts.KubeProxyMode)
}

// nodeDir is where a real node keeps everything of its own, named after
// the node.
func (s *Sandbox) nodeDir(name string) string { return s.path("nodes", name) }

// checkSocketPaths refuses a state directory so deep that the kubelet's
// deepest socket, its pod-resources socket, would not fit a unix socket
// address (108 bytes with the NUL): the kubelet would exit at start.
func checkSocketPaths(dir string) error {
	const sunPathMax = 107
	longest := filepath.Join(dir, "nodes", fmt.Sprintf("aks-pool%d-12345678-vmss%06d", maxNodes, maxNodes), "kubelet", "pod-resources", "kubelet.sock")
	if len(longest) > sunPathMax {
		return fmt.Errorf("state directory %q is too long: the kubelet's sockets under it (%s, %d bytes) would exceed the %d bytes of a unix socket path; use a shorter directory (%d bytes at most)",
			dir, longest, len(longest), sunPathMax, len(dir)-(len(longest)-sunPathMax))
	}
	return nil
}

// containerdSocket is the file name of a real node's containerd socket, in
// its directory.
const containerdSocket = "containerd.sock"

// ChartCRISocket is the chart's nmi.criSocket for this sandbox: the nodes
// share the machine's filesystem, so each real node's containerd listens in
// the node's own directory, which the chart resolves per node from
// "$(NODE_NAME)".
func (s *Sandbox) ChartCRISocket() string {
	return filepath.Join(s.nodeDir("$(NODE_NAME)"), containerdSocket)
}

func (r *realNode) path(elem ...string) string {
	return filepath.Join(append([]string{r.dir}, elem...)...)
}

func (r *realNode) start(name string, args ...string) error {
	p, err := startIn(r.netns, name, r.path(name+".log"), exec.Command(filepath.Join(r.sb.opts.NodeAssets, name), args...))
	if err != nil {
		return err
	}
	r.procs = append(r.procs, p)
	return nil
}

// cgroupName is the node's cgroup root, in every v1 hierarchy.
func (r *realNode) cgroupName() string { return r.sb.NetNSName(fmt.Sprintf("n%d", r.index)) }

// makeCgroups creates the node's cgroup root in every hierarchy: the
// kubelet wants it to exist (docs/sandbox.md).
func (r *realNode) makeCgroups() error {
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	for _, procs := range hierarchies {
		h := filepath.Dir(procs)
		d := filepath.Join(h, r.cgroupName())
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		r.cgroups = append(r.cgroups, d)
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(h, f))
				if err == nil {
					err = os.WriteFile(filepath.Join(d, f), b, 0o644)
				}
				if err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// startContainerd starts containerd with its root, state, socket, runc's
// root, the pods' network namespaces and the CNI configuration under the
// node's directory, and returns its socket.
func (r *realNode) startContainerd(ctx context.Context) (string, error) {
	sock := r.path(containerdSocket)
	if err := os.MkdirAll(r.path("cni"), 0o755); err != nil {
		return "", err
	}
	// No masquerading: NMI tells pods apart by their source address.
	// Hairpin: a pod reaches itself through a Service.
	// The network's name starts the node's entries in libcni's results
	// cache, the machine's /var/lib/cni/results, so teardown finds them.
	conflist := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[{"type":"bridge","bridge":"cni0","isDefaultGateway":true,"hairpinMode":true,"ipMasq":false,"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}`,
		r.cgroupName(), r.path("ipam"), podCIDR(r.index).String())
	if err := os.WriteFile(r.path("cni", "10-bridge.conflist"), []byte(conflist), 0o644); err != nil {
		return "", err
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return "", err
	}
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
`, r.path("containerd", "root"), r.path("containerd", "state"), sock, filepath.Join(r.sb.opts.NodeAssets, "cni"), r.path("cni"),
		runc, r.path("runc"), sandboxImage)
	if err := os.WriteFile(r.path("containerd.toml"), []byte(config), 0o644); err != nil {
		return "", err
	}
	if err := r.start("containerd", "--config", r.path("containerd.toml")); err != nil {
		return "", err
	}
	return sock, wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		_, err := os.Stat(sock)
		return err == nil, nil
	})
}

// writeKubeconfig gives the kubelet a client certificate of the node's
// identity (system:node:<name> in system:nodes), which the Node authorizer
// and NodeRestriction check.
func (r *realNode) writeKubeconfig() (string, error) {
	crt, key, err := writeKeyPair(r.sb.ca, r.dir, "kubelet-client", testca.Leaf{CommonName: "system:node:" + r.name,
		Organizations: []string{"system:nodes"}, Usage: x509.ExtKeyUsageClientAuth})
	if err != nil {
		return "", err
	}
	path := r.path("kubelet.kubeconfig")
	return path, r.writeClientKubeconfig(path, crt, key)
}

// writeClientKubeconfig writes a kubeconfig for the apiserver's address
// with a client certificate.
func (r *realNode) writeClientKubeconfig(path, crt, key string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["sandbox"] = &clientcmdapi.Cluster{Server: fmt.Sprintf("https://%s:%d", APIServerIP, apiserverPort), CertificateAuthorityData: r.sb.ca.PEM}
	cfg.AuthInfos["client"] = &clientcmdapi.AuthInfo{ClientCertificate: crt, ClientKey: key}
	cfg.Contexts["sandbox"] = &clientcmdapi.Context{Cluster: "sandbox", AuthInfo: "client"}
	cfg.CurrentContext = "sandbox"
	return clientcmd.WriteToFile(*cfg, path)
}

// startKubelet configures the kubelet for this machine (cgroup v1,
// cgroupfs, no swap check; docs/sandbox.md), the cluster DNS, the node's
// VMSS instance as providerID and its pool's labels. The node's own
// resolver is the cluster DNS too: it knows the fake cloud's names, as a
// VM's does the cloud's.
func (r *realNode) startKubelet(sock, kubeconfig, providerID, pool string, taints []corev1.Taint) error {
	if err := os.WriteFile(r.path("resolv.conf"), fmt.Appendf(nil, "nameserver %s\n", ClusterDNSIP), 0o644); err != nil {
		return err
	}
	var registerTaints strings.Builder
	for _, t := range taints {
		fmt.Fprintf(&registerTaints, "\n  - {key: %q, effect: %q}", t.Key, t.Effect)
	}
	if registerTaints.Len() == 0 {
		registerTaints.WriteString(" []")
	}
	ip := nodeLinkNode(r.index).String()
	// The images were imported, not pulled: image GC must never remove them.
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: /%[1]s
containerRuntimeEndpoint: unix://%[2]s
podLogsDir: %[3]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[4]q}
authorization: {mode: AlwaysAllow}
address: %[5]s
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
staticPodPath: ""
clusterDNS: [%[6]s]
clusterDomain: cluster.local
resolvConf: %[7]q
providerID: %[8]q
registerWithTaints:%[9]s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
localStorageCapacityIsolation: false
`, r.cgroupName(), sock, r.path("pod-logs"), r.sb.path("pki", "ca.crt"), ip, ClusterDNSIP, r.path("resolv.conf"), providerID, registerTaints.String())
	if err := os.WriteFile(r.path("kubelet.yaml"), []byte(config), 0o644); err != nil {
		return err
	}
	labels := fmt.Sprintf("kubernetes.azure.com/agentpool=%s,agentpool=%s,type=sandbox", pool, pool)
	return r.start("kubelet", "--config", r.path("kubelet.yaml"), "--kubeconfig", kubeconfig,
		"--root-dir", r.path("kubelet"), "--hostname-override", r.name, "--node-ip", ip, "--node-labels", labels)
}

func (r *realNode) waitReady(ctx context.Context) error {
	client, err := kubernetes.NewForConfig(r.sb.Config)
	if err != nil {
		return err
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, p := range r.procs {
			if p.exited() {
				return false, fmt.Errorf("%s exited: see %s", p.name, r.path(p.name+".log"))
			}
		}
		n, err := client.CoreV1().Nodes().Get(ctx, r.name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("node %s Ready: %w", r.name, err)
	}
	return nil
}

// stop ends kube-proxy, the kubelet and containerd, then what outlives
// them by design (the runc shims and the containers), and removes the
// node's cgroups and the mounts under its directory.
func (r *realNode) stop() error {
	errs := []error{r.stopKubeProxy()}
	for i := len(r.procs) - 1; i >= 0; i-- {
		errs = append(errs, r.procs[i].stop(10*time.Second))
	}
	out, _ := exec.Command("pgrep", "-f", r.dir).Output()
	for _, pid := range strings.Fields(string(out)) {
		_ = exec.Command("kill", "-9", "--", pid).Run()
	}
	for _, d := range r.cgroups {
		errs = append(errs, removeCgroup(d))
	}
	errs = append(errs, unmountUnder(r.dir), removeCNIResults(r.cgroupName()))
	return errors.Join(errs...)
}

// removeCgroup kills what is left in a cgroup tree and removes it.
func removeCgroup(dir string) error {
	var subdirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			subdirs = append(subdirs, p)
		}
		return nil
	})
	for i := len(subdirs) - 1; i >= 0; i-- {
		d := subdirs[i]
		err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, pid := range strings.Fields(string(b)) {
				_ = exec.Command("kill", "-9", pid).Run()
			}
			err := os.Remove(d)
			return err == nil || os.IsNotExist(err), nil
		})
		if err != nil {
			return fmt.Errorf("cgroup %s left behind: %w", d, err)
		}
	}
	return nil
}

// unmountUnder lazily unmounts every mount point below dir (the pods'
// network namespaces, containerd's and the kubelet's volumes), deepest first.
func unmountUnder(dir string) error {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	var errs []error
	for i := len(points) - 1; i >= 0; i-- {
		if out, err := exec.Command("umount", "-l", points[i]).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("umount %s: %w: %s", points[i], err, out))
		}
	}
	return errors.Join(errs...)
}

// cniResults is libcni's results cache, where containerd's CNI calls write.
const cniResults = "/var/lib/cni/results"

// removeCNIResults removes the results cache entries of the CNI networks
// whose name starts with prefix: a killed node never called DEL for its pods.
func removeCNIResults(prefix string) error {
	files, _ := filepath.Glob(filepath.Join(cniResults, prefix+"*"))
	var errs []error
	for _, f := range files {
		errs = append(errs, os.Remove(f))
	}
	return errors.Join(errs...)
}

// cleanCgroups removes the cgroups of every real node of the sandboxes
// whose namespaces start with prefix, and what still runs in them, and their
// CNI results: the way out after a sandbox was killed with SIGKILL (its
// shims and containers survive it).
func cleanCgroups(prefix string) error {
	errs := []error{removeCNIResults(prefix)}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + prefix + "*")
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			errs = append(errs, removeCgroup(d))
		}
	}
	return errors.Join(errs...)
}
