//go:build e2e

// Package nmi_test runs NMI against real iptables in network namespaces the
// test creates: one plays the node (NMI, fake IMDS on 169.254.169.254, the
// apiserver), the others are pods hanging off it by veth pairs, routed
// (pod-a, pod-b, agent: a /24 each) or on a bridge (bridged-a, bridged-b).
// The machine's own namespace is never changed.
package nmi_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// The child process (run inside the node namespace) finds its setup here.
const (
	envPods    = "AADPI_NMI_PODS" // comma-separated name=netns=ip
	envNMIPath = "AADPI_NMI_BINARY"
	// envCNICache is the CNI results cache the test writes for the pods,
	// as a container runtime would, for NMI's nmi.cniCacheDir.
	envCNICache = "AADPI_NMI_CNI_CACHE"
	bridge      = "cni0"
	metadataIP  = "169.254.169.254"
	Chain       = "aad-metadata"
	nodeName    = "node-0"
	nodeIP      = "10.199.0.1"
	// assignmentsNS stands for the assigner's namespace.
	assignmentsNS = "kube-system"
)

// pod is a pod network namespace with its address.
type pod struct{ name, netns, ip string }

func TestNMIInNetworkNamespaces(t *testing.T) {
	if testns.InChild() {
		functional(t, setupNode(t))
		return
	}
	runInNamespaces(t)
}

// runInNamespaces creates the node and pod namespaces and reruns the calling
// test inside the node namespace, where it finds them through the
// environment.
func runInNamespaces(t *testing.T) {
	framework.RequireRoot(t)
	if _, err := framework.Assets(); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "nmi")
	// Built as the image builds it (build/Dockerfile): static and stripped,
	// so that the RSS figures are the shipped binary's (a cgo build maps
	// libc too).
	if out, err := framework.StaticBuild(bin, "./cmd/nmi").CombinedOutput(); err != nil {
		t.Fatalf("building nmi: %v\n%s", err, out)
	}

	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	nodeNS := testns.Prefix + "nmi-" + hex.EncodeToString(suffix)
	node := createNetns(t, nodeNS)
	err := node.Do(func(ns.NetNS) error {
		if err := testns.NodeUplink(net.ParseIP(nodeIP)); err != nil {
			return err
		}
		return testns.AddAddr("lo", &net.IPNet{IP: net.ParseIP(metadataIP), Mask: net.CIDRMask(32, 32)})
	})
	if err != nil {
		t.Fatalf("setting up the node namespace: %v", err)
	}
	bridgeGW := net.IPv4(10, 201, 0, 1)
	err = node.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}); err != nil {
			return fmt.Errorf("adding bridge: %w", err)
		}
		if err := testns.LinkUp(bridge); err != nil {
			return err
		}
		return testns.AddAddr(bridge, &net.IPNet{IP: bridgeGW, Mask: net.CIDRMask(24, 32)})
	})
	if err != nil {
		t.Fatalf("setting up the node's bridge: %v", err)
	}
	cniCache := t.TempDir()
	var pods []string
	for i, name := range []string{"pod-a", "pod-b", "agent", "bridged-a", "bridged-b"} {
		nsName := fmt.Sprintf("%s-%d", nodeNS, i)
		podNS := createNetns(t, nsName)
		hostIf := fmt.Sprintf("veth%d", i)
		gw, podIP := net.IPv4(10, 200, byte(i), 1), net.IPv4(10, 200, byte(i), 2)
		bridged := strings.HasPrefix(name, "bridged-")
		if bridged {
			gw, podIP = bridgeGW, net.IPv4(10, 201, 0, byte(i))
		}
		err := podNS.Do(func(ns.NetNS) error { return testns.Uplink(node, hostIf, podIP, gw) })
		if err == nil {
			err = node.Do(func(ns.NetNS) error {
				if bridged {
					return enslave(hostIf, bridge)
				}
				return testns.AddAddr(hostIf, &net.IPNet{IP: gw, Mask: net.CIDRMask(24, 32)})
			})
		}
		if err == nil {
			err = writeCNIResult(cniCache, name, hostIf, podIP, bridged)
		}
		if err != nil {
			t.Fatalf("plugging %s into the node: %v", name, err)
		}
		pods = append(pods, name+"="+nsName+"="+podIP.String())
	}

	testns.RerunIn(t, node, 15*time.Minute, envPods+"="+strings.Join(pods, ","), envNMIPath+"="+bin, envCNICache+"="+cniCache)
}

// enslave makes link a port of bridge, in the calling thread's namespace.
func enslave(link, bridge string) error {
	l, err := netlink.LinkByName(link)
	if err != nil {
		return err
	}
	b, err := netlink.LinkByName(bridge)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetMaster(l, b); err != nil {
		return fmt.Errorf("adding %s to %s: %w", link, bridge, err)
	}
	return nil
}

// writeCNIResult writes the pod's result into the CNI results cache as
// containerd's libcni does: the bridge plugin's (bridge, host veth, pod
// interface) or a routed plugin's (host veth, pod interface).
func writeCNIResult(dir, pod, hostIf string, ip net.IP, bridged bool) error {
	type iface struct {
		Name    string `json:"name"`
		Sandbox string `json:"sandbox,omitempty"`
	}
	ifaces := []iface{{Name: hostIf}, {Name: "eth0", Sandbox: "/var/run/netns/" + pod}}
	if bridged {
		ifaces = append([]iface{{Name: bridge}}, ifaces...)
	}
	result := map[string]any{"kind": "cniCacheV1", "containerId": pod, "ifName": "eth0", "networkName": "test",
		"result": map[string]any{"cniVersion": "1.0.0", "interfaces": ifaces,
			"ips": []map[string]any{{"address": ip.String() + "/24", "interface": len(ifaces) - 1}}}}
	raw, err := json.Marshal(result)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "test-"+pod+"-eth0"), raw, 0o600)
}

// createNetns creates a namespace and deletes it, with whatever still runs
// in it, when the test ends.
func createNetns(t *testing.T, name string) ns.NetNS {
	t.Helper()
	n, err := testns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := testns.Delete(name); err != nil {
			t.Errorf("deleting netns %s: %v", name, err)
		}
	})
	return n
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// node is what runs inside the node namespace.
type node struct {
	pods     map[string]pod
	state    *fakeazure.State
	signer   *fakeazure.Signer
	pool     fakeazure.Pool
	idA, idB fakeazure.Identity
	client   client.Client
	nmi      *exec.Cmd
	nmiLog   string
	// kubeconfig is NMI's, for starting it again.
	kubeconfig string
	// imdsCalls counts the requests the node's IMDS answered; direct those
	// that came from a pod's address, i.e. were not intercepted.
	imdsCalls, direct atomic.Int64
	// imdsConns counts the connections the node's IMDS accepted.
	imdsConns atomic.Int64
	// aad is the fake Azure AD that NMI exchanges federated identities'
	// service-account tokens at.
	aad *federatedAAD
}

const tokenURL = "http://" + metadataIP + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"

// setupNode starts the fake IMDS, the apiserver and NMI inside the node
// namespace, registers the pods, and waits until NMI intercepts.
func setupNode(t *testing.T) *node {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	n := &node{pods: map[string]pod{}}
	for _, p := range strings.Split(os.Getenv(envPods), ",") {
		f := strings.Split(p, "=")
		n.pods[f[0]] = pod{name: f[0], netns: f[1], ip: f[2]}
	}

	// Fake Azure: a VMSS with a system-assigned identity and two user-assigned
	// identities, both on the VMSS, so only NMI stands between a pod and the
	// other pod's identity.
	n.state = fakeazure.NewState()
	var err error
	if n.signer, err = fakeazure.NewSigner(); err != nil {
		t.Fatal(err)
	}
	n.pool = n.state.AddPool(fakeazure.KindVMSS, "sub", "rg", "nodepool", 1, true)
	n.idA = n.state.CreateIdentity("sub", "rg", "id-a")
	n.idB = n.state.CreateIdentity("sub", "rg", "id-b")
	for _, id := range []fakeazure.Identity{n.idA, n.idB} {
		if err := n.state.SetUserAssigned(n.pool.ID, id.ResourceID, true); err != nil {
			t.Fatal(err)
		}
	}
	lis, err := net.Listen("tcp", metadataIP+":80")
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeazure.IMDS{State: n.state, Signer: n.signer, PoolID: n.pool.ID, VMName: n.pool.Instances[0]}
	imds := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.imdsCalls.Add(1)
		if host, _, _ := net.SplitHostPort(r.RemoteAddr); strings.HasPrefix(host, "10.200.") || strings.HasPrefix(host, "10.201.") {
			n.direct.Add(1)
		}
		fake.ServeHTTP(w, r)
	}), ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.imdsConns.Add(1)
		}
	}}
	go func() { _ = imds.Serve(lis) }()
	t.Cleanup(func() { _ = imds.Close() })

	env, cfg := framework.StartEnvironment(t, framework.Options{ServiceAccountKeyFile: writeRSAKey(t)})
	n.aad = startFederatedAAD(t, n, env, cfg)
	scheme := clientgoscheme.Scheme
	if err := aadv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if n.client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}
	createObjects(ctx, t, n.client, n.pods, n.pool, n.idA, n.idB)

	n.kubeconfig = writeKubeconfig(t, env)
	n.nmiLog = filepath.Join(t.TempDir(), "nmi.log")
	// NMI starts on a node where an earlier NMI (aad-pod-identity 1.x)
	// intercepts with the same chain name, as in an upgrade; pod-b asks for
	// tokens throughout and must never reach IMDS itself.
	installLegacyNMI(t)
	stopPolling := poll(n.pods["pod-b"])
	n.nmi = startNMI(t, n, n.nmiLog)

	// NMI intercepts once an unadmitted pod is refused by it.
	var status int
	var body map[string]string
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if status, body, err = get(n.pods["pod-b"], tokenURL); err == nil && status == http.StatusForbidden && strings.Contains(body["error_description"], "no admitted AzureIdentity") {
			break
		}
	}
	if status != http.StatusForbidden {
		t.Fatalf("NMI never intercepted: pod B got %d %v %v\nNMI log:\n%s", status, body, err, readFile(n.nmiLog))
	}
	requests := stopPolling()
	if d := n.direct.Load(); d > 0 || requests == 0 {
		t.Fatalf("taking over the earlier NMI's chain: %d of pod-b's %d requests reached IMDS directly", d, requests)
	}
	if rules := iptablesNAT(t); strings.Contains(rules, legacyComment) || strings.Contains(rules, nodeIP+":2579") {
		t.Fatalf("the earlier NMI's jump or rules are left:\n%s", rules)
	}
	t.Logf("took over the earlier NMI's chain; pod-b's %d requests meanwhile all intercepted", requests)
	// The node named its pool before NMI started, so NMI caches that pool's
	// record alone.
	p, err := nodepool.ParseID(n.pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	if log := readFile(n.nmiLog); !strings.Contains(log, "caching only this node's pool's AzureAssignedIdentity") || !strings.Contains(log, identity.RecordName(p)) {
		t.Fatalf("NMI does not say it caches only record %s:\n%s", identity.RecordName(p), log)
	}
	return n
}

// functional checks who gets which token, then NMI's death and cleanup.
func functional(t *testing.T, n *node) {
	pods, signer, pool, idA, idB, nmi := n.pods, n.signer, n.pool, n.idA, n.idB, n.nmi
	t.Run("startup taint is removed", func(t *testing.T) {
		var got []corev1.Taint
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			var nd corev1.Node
			if err := n.client.Get(context.Background(), client.ObjectKey{Name: nodeName}, &nd); err != nil {
				t.Fatal(err)
			}
			// The apiserver adds node.kubernetes.io/not-ready on its own.
			got = nd.Spec.Taints
			keys := map[string]bool{}
			for _, taint := range got {
				keys[taint.Key] = true
			}
			if keys["other"] && !keys[aadv1.NMINotReadyTaint] {
				return
			}
		}
		t.Fatalf("node taints %v, want %s gone and the unrelated one kept", got, aadv1.NMINotReadyTaint)
	})
	t.Run("admitted pod gets its own identity", func(t *testing.T) {
		expectToken(t, signer, pods["pod-a"], tokenURL, idA.ClientID, idA.ResourceID)
	})
	t.Run("unadmitted pod is refused", func(t *testing.T) {
		expectStatus(t, pods["pod-b"], tokenURL, http.StatusForbidden, "no admitted AzureIdentity")
	})
	t.Run("admitted pod asking for another identity is refused", func(t *testing.T) {
		expectStatus(t, pods["pod-a"], tokenURL+"&client_id="+idB.ClientID, http.StatusForbidden, "not admitted")
	})
	t.Run("binding deleted while the pod runs: refused, then served again once restored", func(t *testing.T) {
		ctx := context.Background()
		if err := n.client.Delete(ctx, bindingA()); err != nil {
			t.Fatal(err)
		}
		// NMI's informer sees the deletion a moment later.
		framework.Eventually(t, 30*time.Second, "pod-a refused", func() error {
			return checkStatus(pods["pod-a"], tokenURL, http.StatusForbidden, "is no longer bound to AzureIdentity default/id-a")
		})
		if err := n.client.Create(ctx, bindingA()); err != nil {
			t.Fatal(err)
		}
		framework.Eventually(t, 30*time.Second, "pod-a served", func() error {
			return checkStatus(pods["pod-a"], tokenURL, http.StatusOK, "access_token")
		})
		expectToken(t, signer, pods["pod-a"], tokenURL, idA.ClientID, idA.ResourceID)
	})
	t.Run("exception pod gets the node identity", func(t *testing.T) {
		expectToken(t, signer, pods["agent"], tokenURL, pool.SystemAssigned, pool.ID)
	})
	t.Run("instance metadata is proxied", func(t *testing.T) {
		expectStatus(t, pods["pod-b"], "http://"+metadataIP+"/metadata/instance?api-version=2021-02-01", http.StatusOK, pool.Instances[0])
	})
	t.Run("other metadata paths are refused", func(t *testing.T) {
		expectStatus(t, pods["pod-b"], "http://"+metadataIP+"/metadata/scheduledevents?api-version=2020-07-01", http.StatusForbidden, "not served")
	})

	t.Run("a pod flooding NMI with connections leaves it within its memory limit", func(t *testing.T) {
		flood(t, n)
	})
	t.Run("a pod cannot reach the node's loopback services", func(t *testing.T) {
		loopbackGuarded(t, pods["pod-b"])
	})
	t.Run("a pod posing as its bridge neighbour gets nothing", func(t *testing.T) {
		spoofingDropped(t, n)
	})
	t.Run("repairs never let traffic through", func(t *testing.T) {
		before := n.direct.Load()
		stop := poll(pods["pod-b"])
		// An extra rule and a duplicate jump: NMI rewrites both.
		run(t, "iptables", "-t", "nat", "-A", Chain, "-p", "udp", "-j", "RETURN")
		run(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-j", Chain)
		want := "-A PREROUTING -j aad-metadata\n-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579\n-A aad-metadata -j RETURN\n"
		framework.Eventually(t, 30*time.Second, "the rules rewritten", func() error {
			if rules := iptablesNAT(t); !strings.HasSuffix(rules, want) || strings.Count(rules, "-j aad-metadata") != 1 {
				return fmt.Errorf("rules:\n%s", rules)
			}
			return nil
		})
		requests := stopPollingAfter(stop, 300*time.Millisecond)
		if d := n.direct.Load() - before; d > 0 {
			t.Fatalf("%d of pod-b's %d requests reached IMDS directly during the repair", d, requests)
		}
		t.Logf("pod-b's %d requests during the repair all intercepted", requests)
	})
	t.Run("tampered rules are repaired", func(t *testing.T) {
		run(t, "iptables", "-t", "nat", "-I", "PREROUTING", "1", "-p", "udp", "-j", "RETURN")
		run(t, "iptables", "-t", "nat", "-D", Chain, "1")
		want := "-A PREROUTING -j aad-metadata\n-A PREROUTING -p udp -j RETURN"
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if rules := iptablesNAT(t); strings.Contains(rules, want) && strings.Contains(rules, "--to-destination 127.0.0.1:2579") {
				expectStatus(t, pods["pod-b"], tokenURL, http.StatusForbidden, "no admitted AzureIdentity")
				return
			}
		}
		t.Fatalf("rules not repaired:\n%s", iptablesNAT(t))
	})
	t.Run("killed NMI leaves the rules and pods are refused", func(t *testing.T) {
		if err := nmi.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = nmi.Wait()
		if rules := iptablesNAT(t); !strings.Contains(rules, "-A PREROUTING -j aad-metadata") || !strings.Contains(rules, "--to-destination 127.0.0.1:2579") {
			t.Fatalf("rules gone after NMI died:\n%s", rules)
		}
		_, _, err := get(pods["pod-a"], tokenURL)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("got %v, want connection refused (traffic must not reach IMDS)", err)
		}
	})
	t.Run("listening on the node's address, only the DNAT reaches NMI: direct and spoofed connections are dropped", func(t *testing.T) {
		listenGuarded(t, n)
	})
	t.Run("nmi cleanup removes the rules", func(t *testing.T) {
		// As the chart's hook runs it, here after the release's ConfigMap
		// is gone (an uninstall retried): the defaults find the rules.
		gone := filepath.Join(t.TempDir(), "config.yaml")
		if out, err := exec.Command(os.Getenv(envNMIPath), "cleanup", "--config", gone).CombinedOutput(); err != nil {
			t.Fatalf("nmi cleanup: %v: %s", err, out)
		}
		if rules := iptablesNAT(t) + run(t, "iptables", "-t", "mangle", "-S") + run(t, "iptables", "-S"); strings.Contains(rules, "aad-metadata") {
			t.Fatalf("rules left after cleanup:\n%s", rules)
		}
		// Without interception the pod reaches the fake IMDS directly,
		// which proves the rules were what stood in between.
		expectToken(t, signer, pods["pod-b"], tokenURL, pool.SystemAssigned, pool.ID)
	})
}

// loopbackGuarded replays CVE-2020-8558 from a pod: with route_localnet,
// which NMI's loopback DNAT target needs, a pod routing 127.0.0.0/8 to the
// node reaches the node's localhost-only listeners, unless NMI's guard chain
// drops what was not DNATed. Without the guard the same connection must
// succeed, so that the test shows the guard is what stops it.
func loopbackGuarded(t *testing.T, p pod) {
	// 127.0.0.2: the pod keeps 127.0.0.1 on its own loopback (a host route
	// of its local table), while the rest of 127.0.0.0/8 goes to the node.
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	gw := net.ParseIP(p.ip).To4()
	gw[3] = 1
	run(t, "ip", "netns", "exec", p.netns, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf.eth0.route_localnet=1")
	run(t, "ip", "-n", p.netns, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
	run(t, "ip", "-n", p.netns, "route", "add", "127.0.0.0/8", "via", gw.String(), "dev", "eth0")
	t.Cleanup(func() {
		_ = exec.Command("ip", "-n", p.netns, "route", "del", "127.0.0.0/8", "via", gw.String(), "dev", "eth0").Run()
		_ = exec.Command("ip", "-n", p.netns, "route", "add", "local", "127.0.0.0/8", "dev", "lo", "table", "local").Run()
	})
	dial := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := dialIn(p.netns)(ctx, "tcp", l.Addr().String())
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	if err := dial(); err == nil {
		t.Fatalf("%s reached the node's %s", p.name, l.Addr())
	}
	// The control: the same connection without the guard gets through.
	run(t, "iptables", "-D", "INPUT", "-j", "aad-metadata-guard")
	err = dial()
	run(t, "iptables", "-I", "INPUT", "1", "-j", "aad-metadata-guard")
	if err != nil {
		t.Fatalf("without the guard the pod still cannot reach %s (%v): the test proves nothing", l.Addr(), err)
	}
}

// nmiMemoryLimit is the chart's nmi.resources.limits.memory.
const nmiMemoryLimit = 512 << 20

// flood opens 2,000 idle keep-alive connections and 40 that trickle a
// header from pod-b, the way a hostile pod would, then measures NMI's RSS
// against the chart's memory limit and how long pod-a waits for a token.
func flood(t *testing.T, n *node) {
	const idle, slowHeads = 2000, 40
	dial := dialIn(n.pods["pod-b"].netns)
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for i := range idle + slowHeads {
		c, err := dial(t.Context(), "tcp", metadataIP+":80")
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if i >= idle {
			_, _ = fmt.Fprintf(c, "GET /metadata/instance HTTP/1.1\r\nHost: %s\r\n", metadataIP)
		}
	}
	var slowest time.Duration
	for range 5 {
		start := time.Now()
		expectToken(t, n.signer, n.pods["pod-a"], tokenURL, n.idA.ClientID, n.idA.ResourceID)
		slowest = max(slowest, time.Since(start))
	}
	kb := rssKB(t, n.nmi.Process.Pid)
	t.Logf("with %d idle and %d slow-header connections opened from pod-b: NMI RSS %d KiB (limit %d KiB); pod-a's slowest of 5 token requests %v",
		idle, slowHeads, kb, nmiMemoryLimit>>10, slowest.Round(100*time.Microsecond))
	if kb<<10 >= nmiMemoryLimit {
		t.Errorf("NMI RSS %d KiB reaches its memory limit", kb)
	}
}

func createObjects(ctx context.Context, t *testing.T, c client.Client, pods map[string]pod, pool fakeazure.Pool, idA, idB fakeazure.Identity) {
	t.Helper()
	objs := []client.Object{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName},
			Spec: corev1.NodeSpec{ProviderID: "azure://" + pool.ID + "/virtualMachines/0", Taints: []corev1.Taint{{Key: aadv1.NMINotReadyTaint, Effect: corev1.TaintEffectNoSchedule}, {Key: "other", Effect: corev1.TaintEffectNoSchedule}}}},
		&aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "id-a"},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: idA.ResourceID, ClientID: idA.ClientID}},
		&aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "id-b"},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: idB.ResourceID, ClientID: idB.ClientID}},
		bindingA(),
		&aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "agents"},
			Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "agent"}}},
		// No controller manager creates it here.
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "default"}},
	}
	meta := map[string]metav1.ObjectMeta{
		"pod-a": {Labels: map[string]string{aadv1.BindingLabel: "a"}, Annotations: map[string]string{aadv1.AnnotationIdentities: "default/id-a", aadv1.AnnotationClientIDs: idA.ClientID}},
		"pod-b": {},
		"agent": {Labels: map[string]string{"app": "agent"}},
	}
	meta["bridged-a"], meta["bridged-b"] = meta["pod-a"], meta["pod-b"]
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("creating %T: %v", o, err)
		}
	}
	recordAssigned(ctx, t, c, pool, "id-a", idA)
	for name, p := range pods {
		m := meta[name]
		m.Namespace, m.Name = "default", name
		// ServiceAccountName as the ServiceAccount admission plugin, which
		// envtest disables, sets it: a token bound to the pod must name it.
		obj := &corev1.Pod{ObjectMeta: m, Spec: corev1.PodSpec{NodeName: nodeName, ServiceAccountName: "default", Containers: []corev1.Container{{Name: "c", Image: "demo"}}}}
		if err := c.Create(ctx, obj); err != nil {
			t.Fatalf("creating pod %s: %v", name, err)
		}
		obj.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}}}
		if err := c.Status().Update(ctx, obj); err != nil {
			t.Fatalf("setting status of pod %s: %v", name, err)
		}
	}
}

// recordAssigned adds to the assigner's record of pool (created if need be)
// an Assigned entry for AzureIdentity default/name: no assigner runs here,
// and NMI serves a user-assigned identity only when an entry of its pool's
// record vouches for it.
func recordAssigned(ctx context.Context, t *testing.T, c client.Client, pool fakeazure.Pool, name string, id fakeazure.Identity) {
	t.Helper()
	p, err := nodepool.ParseID(pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKey{Namespace: assignmentsNS, Name: identity.RecordName(p)}
	var rec aadv1.AzureAssignedIdentity
	if err := c.Get(ctx, key, &rec); apierrors.IsNotFound(err) {
		rec = aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
			Spec: aadv1.AzureAssignedIdentitySpec{NodePool: pool.ID}}
		if err := c.Create(ctx, &rec); err != nil {
			t.Fatalf("creating AzureAssignedIdentity: %v", err)
		}
	} else if err != nil {
		t.Fatalf("reading AzureAssignedIdentity: %v", err)
	}
	rec.Status.Identities = append(rec.Status.Identities, aadv1.IdentityAssignment{
		AzureIdentityRef: aadv1.IdentityReference{Namespace: "default", Name: name},
		ClientID:         id.ClientID, ResourceID: id.ResourceID, State: aadv1.StateAssigned, Pods: 1})
	slices.SortFunc(rec.Status.Identities, func(a, b aadv1.IdentityAssignment) int {
		return aadv1.CompareRefs(a.AzureIdentityRef, b.AzureIdentityRef.Namespace, b.AzureIdentityRef.Name)
	})
	rec.Status.Assigned++
	if err := c.Status().Update(ctx, &rec); err != nil {
		t.Fatalf("setting status of AzureAssignedIdentity: %v", err)
	}
}

// bindingA gives pod-a (label aadpodidbinding=a) identity id-a.
func bindingA() *aadv1.AzureIdentityBinding {
	return &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "a"},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "id-a", Selector: "a"}}
}

func writeKubeconfig(t *testing.T, env *envtest.Environment) string {
	t.Helper()
	user, err := env.AddUser(envtest.User{Name: "nmi", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	return writeTemp(t, "kubeconfig", data)
}

// writeTemp writes data to a file of the test's own directory, readable by
// its owner only (a kubeconfig holds credentials), and returns its path.
func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// nmiConfig writes the harness's NMI configuration: federation is on, in
// the fake Azure's tenant.
func nmiConfig(t *testing.T, tenantID string) string {
	t.Helper()
	c := config.Configuration{TypeMeta: metav1.TypeMeta{APIVersion: config.APIVersion, Kind: config.Kind}}
	c.Policy.Exceptions.Namespaces = []string{"default"}
	c.Policy.Federation.Enabled, c.Policy.Federation.TenantID = true, tenantID
	c.NMI.SyncPeriod = &metav1.Duration{Duration: 2 * time.Second}
	c.NMI.RemoveStartupTaint = true
	c.NMI.CNICacheDir = os.Getenv(envCNICache)
	if os.Getenv("AADPI_NMI_LOAD") != "" {
		// The load generator measures the miss path, which the per-pod
		// limit on uncached tokens would only cut short.
		c.NMI.UncachedTokenRate = ptr.To(0.0)
	}
	data, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return writeTemp(t, "config.yaml", data)
}

func startNMI(t *testing.T, n *node, logPath string, extra ...string) *exec.Cmd {
	t.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--kubeconfig", n.kubeconfig, "--metrics-bind-address", "0",
		"--health-probe-bind-address", "127.0.0.1:0", "--assignments-namespace", assignmentsNS, "--config", nmiConfig(t, n.state.TenantID),
		"--aad-authority-host", n.aad.url}
	args = append(args, extra...)
	cmd := exec.Command(os.Getenv(envNMIPath), args...)
	// The fake Azure AD's CA, as the sandbox gives every container its own.
	cmd.Env = append(os.Environ(), "NODE_NAME="+nodeName, "SSL_CERT_FILE="+n.aad.caFile)
	// The chart's nmi.goMemLimit, for the load generators' RSS figures.
	if limit := os.Getenv("AADPI_NMI_GOMEMLIMIT"); limit != "" {
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+limit)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		_ = logFile.Close()
		if t.Failed() {
			t.Logf("NMI log:\n%s", readFile(logPath))
		}
	})
	return cmd
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func iptablesNAT(t *testing.T) string {
	t.Helper()
	return run(t, "iptables", "-t", "nat", "-S")
}

// get sends a metadata request from inside a pod's network namespace.
func get(p pod, url string) (int, map[string]string, error) {
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: dialIn(p.netns)}}
	status, raw, err := getWith(client, url)
	if err != nil {
		return 0, nil, err
	}
	body := map[string]string{}
	if err := json.Unmarshal(raw, &body); err != nil {
		body = map[string]string{"raw": string(raw)}
	}
	return status, body, nil
}

// getWith sends a metadata request with c and returns the raw answer.
func getWith(c *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Metadata", "true")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// dialIn opens sockets inside the pod namespace called name.
func dialIn(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		target, err := testns.Open(name)
		if err != nil {
			return nil, err
		}
		defer target.Close()
		return testns.Dial(ctx, target, network, addr)
	}
}

func expectStatus(t *testing.T, p pod, url string, status int, contains string) {
	t.Helper()
	if err := checkStatus(p, url, status, contains); err != nil {
		t.Fatal(err)
	}
}

// checkStatus tells whether the pod gets status with a body containing
// contains.
func checkStatus(p pod, url string, status int, contains string) error {
	got, body, err := get(p, url)
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	if got != status || !strings.Contains(fmt.Sprint(body), contains) {
		return fmt.Errorf("%s: got %d %v; want %d containing %q", p.name, got, body, status, contains)
	}
	return nil
}

func expectToken(t *testing.T, signer *fakeazure.Signer, p pod, url, appID, mirID string) {
	t.Helper()
	status, body, err := get(p, url)
	if err != nil || status != http.StatusOK {
		t.Fatalf("%s: got %d %v %v", p.name, status, body, err)
	}
	claims, err := signer.Parse(body["access_token"])
	if err != nil || claims.AppID != appID || claims.XMSMirID != mirID {
		t.Fatalf("%s: claims %+v %v; want appid %s xms_mirid %s", p.name, claims, err, appID, mirID)
	}
}
