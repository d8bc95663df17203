package sandbox

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// kube-proxy modes a real node can run.
const (
	// KubeProxyIPTables is AKS's mode, the default.
	KubeProxyIPTables = "iptables"
	// KubeProxyNFTables needs the nft binary (`make deps`).
	KubeProxyNFTables = "nftables"
)

// KubeProxyModeFromEnv is the mode SANDBOX_KUBE_PROXY_MODE asks for,
// KubeProxyIPTables when it is unset.
func KubeProxyModeFromEnv() string {
	if m := os.Getenv("SANDBOX_KUBE_PROXY_MODE"); m != "" {
		return m
	}
	return KubeProxyIPTables
}

func checkKubeProxyMode(mode string) error {
	switch mode {
	case KubeProxyIPTables:
	case KubeProxyNFTables:
		if _, err := exec.LookPath("nft"); err != nil {
			return fmt.Errorf("kube-proxy's nftables mode: %w (`make deps` installs it)", err)
		}
	default:
		return fmt.Errorf("unknown kube-proxy mode %q: want %s or %s", mode, KubeProxyIPTables, KubeProxyNFTables)
	}
	return nil
}

// kube-proxy's health and metrics ports, on the node's loopback.
const (
	kubeProxyHealthz = "127.0.0.1:10256"
	kubeProxyMetrics = "127.0.0.1:10249"
)

// lastSyncMetric is the time of kube-proxy's last successful sync of its
// rules, 0 before the first: its healthz answers 200 while it starts.
const lastSyncMetric = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"

// clusterCIDR is every node's pod range: kube-proxy masquerades service
// traffic from elsewhere only, so pods keep their source address (NMI and
// the tests tell pods apart by it).
const clusterCIDR = "10.244.0.0/16"

// startKubeProxy runs kube-proxy in mode as a process in the node's
// namespace, like the kubelet, as user system:kube-proxy (which the
// apiserver's default system:node-proxier binding authorizes), and waits
// until it synced its rules.
func (r *realNode) startKubeProxy(ctx context.Context, mode string) error {
	if err := checkKubeProxyMode(mode); err != nil {
		return err
	}
	kubeconfig := r.path("kube-proxy.kubeconfig")
	if _, err := os.Stat(kubeconfig); os.IsNotExist(err) {
		crt, key, err := writeKeyPair(r.sb.ca, r.dir, "kube-proxy-client", testca.Leaf{CommonName: "system:kube-proxy", Usage: x509.ExtKeyUsageClientAuth})
		if err != nil {
			return err
		}
		if err := r.writeClientKubeconfig(kubeconfig, crt, key); err != nil {
			return err
		}
	}
	// conntrack: leave the kernel's limits and timeouts alone (the machine's
	// nf_conntrack_max is global). localhostNodePorts: no route_localnet,
	// NodePorts on loopback are not used here.
	config := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %q}
hostnameOverride: %q
mode: %s
clusterCIDR: %s
healthzBindAddress: %s
metricsBindAddress: %s
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
nodePortAddresses: [primary]
iptables: {localhostNodePorts: false}
`, kubeconfig, r.name, mode, clusterCIDR, kubeProxyHealthz, kubeProxyMetrics)
	configFile := r.path("kube-proxy.yaml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		return err
	}
	p, err := startIn(r.netns, "kube-proxy", r.path("kube-proxy.log"), exec.Command(filepath.Join(r.sb.opts.NodeAssets, "kube-proxy"), "--config", configFile))
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.kubeProxy = p
	r.mu.Unlock()
	return r.waitKubeProxy(ctx, p)
}

// waitKubeProxy waits until kube-proxy has synced its rules once (its
// metrics say when).
func (r *realNode) waitKubeProxy(ctx context.Context, p *process) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return testns.Dial(ctx, r.netns, network, addr)
		},
	}}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		if p.exited() {
			return fmt.Errorf("kube-proxy on %s exited: see %s", r.name, r.path("kube-proxy.log"))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+kubeProxyMetrics+"/metrics", nil)
		if resp, err := client.Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if synced(body) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-proxy on %s synced: %w", r.name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// synced reports whether kube-proxy's metrics show a sync of its rules.
func synced(metrics []byte) bool {
	for _, line := range strings.Split(string(metrics), "\n") {
		if !strings.HasPrefix(line, lastSyncMetric) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && v > 0 {
			return true
		}
	}
	return false
}

// stopKubeProxy stops the node's kube-proxy, leaving its rules in place as
// a crashed or upgraded kube-proxy does.
func (r *realNode) stopKubeProxy() error {
	r.mu.Lock()
	p := r.kubeProxy
	r.kubeProxy = nil
	r.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop(10 * time.Second)
}

// RestartKubeProxy stops the node's kube-proxy and starts it again in mode
// (KubeProxyIPTables or KubeProxyNFTables; switching cleans up the other
// mode's rules), and waits until it has synced. Real nodes only.
func (n *Node) RestartKubeProxy(ctx context.Context, mode string) error {
	if n.real == nil {
		return fmt.Errorf("node %s runs no kube-proxy (a kubelet stand-in)", n.Name)
	}
	if err := n.real.stopKubeProxy(); err != nil {
		return err
	}
	return n.real.startKubeProxy(ctx, mode)
}
