package sandbox

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	corev1 "k8s.io/api/core/v1"

	v1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// Fake subscription and node resource group of the sandbox's "cluster".
const (
	SubscriptionID    = "00000000-0000-0000-0000-00000000cafe"
	NodeResourceGroup = "MC_sandbox_sandbox_westus2"
)

// NodeOptions choose the simulated nodes.
type NodeOptions struct {
	// Count of nodes (default 2), spread round-robin over Pools VMSS pools (default 2).
	Count, Pools int
	// StartupTaint registers nodes with NMI's not-ready taint, as a pool
	// configured for it would.
	StartupTaint bool
}

// Node is one simulated node.
type Node struct {
	Name  string
	Pool  fakeazure.Pool
	IP    string
	NetNS string
	// CRISocket is the node's containerd socket.
	CRISocket string
	// imdsCallers counts IMDS requests by source IP: only NMI, on the
	// node's address, should ever reach IMDS from a node with NMI.
	imdsMu      sync.Mutex
	imdsCallers map[string]int
	// real is the node's kubelet, containerd and kube-proxy.
	real   *realNode
	cancel context.CancelFunc
	done   chan struct{}
}

// AddNodes creates the pools in the fake Azure, one network namespace per
// node joined to the control plane, and a real node (kubelet, containerd,
// kube-proxy) per node, and waits until each Node is registered; the nodes
// then get the cluster DNS (once ServeAzure ran, it knows the fake cloud's names).
func (s *Sandbox) AddNodes(ctx context.Context, opts NodeOptions) error {
	if opts.Count == 0 {
		opts.Count = 2
	}
	if opts.Pools == 0 {
		opts.Pools = 2
	}
	if opts.Count < 1 || opts.Count > maxNodes || opts.Pools < 1 || opts.Pools > opts.Count {
		return fmt.Errorf("want 1..%d nodes over 1..nodes pools, got %d over %d", maxNodes, opts.Count, opts.Pools)
	}
	var pools []fakeazure.Pool
	for p := range opts.Pools {
		n := (opts.Count - p + opts.Pools - 1) / opts.Pools
		pools = append(pools, s.Azure.AddPool(fakeazure.KindVMSS, SubscriptionID, NodeResourceGroup,
			fmt.Sprintf("aks-pool%d-12345678-vmss", p+1), n, true))
	}
	var taints []corev1.Taint
	if opts.StartupTaint {
		taints = []corev1.Taint{{Key: v1.NMINotReadyTaint, Effect: corev1.TaintEffectNoSchedule}}
	}
	for i := 1; i <= opts.Count; i++ {
		pool := pools[(i-1)%opts.Pools]
		instance := (i - 1) / opts.Pools
		name := fmt.Sprintf("%s%06d", strings.TrimSuffix(pool.Name, "vmss")+"vmss", instance)
		netns, err := s.createNetNS(fmt.Sprintf("n%d", i))
		if err != nil {
			return err
		}
		if err := setupNodeNS(s.cp, netns, i); err != nil {
			return err
		}
		n := &Node{Name: name, Pool: pool, IP: nodeLinkNode(i).String(), NetNS: s.NetNSName(fmt.Sprintf("n%d", i)),
			imdsCallers: map[string]int{}, done: make(chan struct{})}
		if err := s.serveIMDS(netns, n, pool.Instances[instance]); err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		providerID := fmt.Sprintf("azure://%s/virtualMachines/%d", pool.ID, instance)
		if err := s.addRealNode(ctx, netns, i, n, providerID, taints); err != nil {
			return err
		}
	}
	return s.deployClusterDNS(ctx)
}

// Nodes returns the simulated nodes.
func (s *Sandbox) Nodes() []*Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Node(nil), s.nodes...)
}

// IMDSCallers returns how many requests the node's IMDS got from each
// source IP.
func (n *Node) IMDSCallers() map[string]int {
	n.imdsMu.Lock()
	defer n.imdsMu.Unlock()
	return maps.Clone(n.imdsCallers)
}

// serveIMDS serves the fake Azure's IMDS for one VM on 169.254.169.254:80
// inside the node's namespace, as the platform does on a real VM.
func (s *Sandbox) serveIMDS(netns ns.NetNS, n *Node, vm string) error {
	l, err := testns.Listen(netns, net.JoinHostPort(MetadataIP.String(), "80"))
	if err != nil {
		return fmt.Errorf("IMDS listener: %w", err)
	}
	imds := &fakeazure.IMDS{State: s.Azure, Signer: s.Signer, PoolID: n.Pool.ID, VMName: vm}
	record := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		n.imdsMu.Lock()
		n.imdsCallers[ip]++
		n.imdsMu.Unlock()
		imds.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: record, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	s.addCloser(func() { _ = srv.Close() })
	return nil
}

// addRealNode starts a real node and registers it for teardown, even when
// it fails to start.
func (s *Sandbox) addRealNode(ctx context.Context, netns ns.NetNS, i int, n *Node, providerID string, taints []corev1.Taint) error {
	var r *realNode
	n.cancel = func() {
		go func() {
			defer close(n.done)
			if r != nil {
				if err := r.stop(); err != nil {
					s.log.Error(err, "stopping node", "node", n.Name)
				}
			}
		}()
	}
	s.mu.Lock()
	s.nodes = append(s.nodes, n)
	s.mu.Unlock()
	var err error
	r, err = s.startRealNode(ctx, netns, i, n, providerID, taints)
	n.real = r
	return err
}
