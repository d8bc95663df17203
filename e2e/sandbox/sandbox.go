// Package sandbox runs a local Kubernetes cluster made of real control-plane
// processes and simulated nodes, all inside network namespaces it creates
// itself, so the machine's own network namespace gets no address, route or
// iptables rule. The apiserver is reachable from outside only through a
// loopback port the sandbox forwards.
package sandbox

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

const apiserverPort = 6443

// Options configure a sandbox.
type Options struct {
	// ID names the sandbox; its namespaces are aadpi-sbx-<ID>-*. Random when empty.
	ID string
	// Dir holds certificates, logs and data; <tmp>/aadpi-sbx-<ID> when empty.
	Dir string
	// Assets holds etcd and the Kubernetes binaries (KUBEBUILDER_ASSETS when empty).
	Assets string
	// Listen is the loopback address the apiserver is forwarded to (127.0.0.1:0 when empty).
	Listen string
	// Log receives the sandbox's own progress.
	Log logr.Logger
	// NodeAssets holds kubelet, containerd and the CNI plugins of real nodes
	// (NodeAssets() when empty).
	NodeAssets string
	// KubeProxyMode is the mode of real nodes' kube-proxy: KubeProxyIPTables
	// or KubeProxyNFTables (KubeProxyModeFromEnv() when empty).
	KubeProxyMode string
	// NodeImages are the images the nodes run (required).
	NodeImages *NodeImages
	// Azure is the fake cloud; a new one when nil.
	Azure *fakeazure.State
}

// Sandbox is one running cluster.
type Sandbox struct {
	ID  string
	Dir string
	// Kubeconfig is the path of the admin kubeconfig for the forwarded port.
	Kubeconfig string
	// Config is the admin rest.Config for the forwarded port.
	Config *rest.Config
	// IssuerURL is the service-account issuer, the apiserver's address in
	// the control-plane namespace (https://10.200.0.1:6443), which serves
	// its OpenID discovery document and keys to anyone: the issuer of
	// federated identity credentials, as AKS's OIDC issuer URL is.
	IssuerURL string

	// Azure is the fake cloud the nodes' pools live in.
	Azure *fakeazure.State
	// Signer signs the fake Azure's tokens (IMDS in every node).
	Signer *fakeazure.Signer

	opts   Options
	log    logr.Logger
	mu     sync.Mutex
	nodes  []*Node
	ca     *testca.CA
	cp     ns.NetNS
	netns  []string // every namespace created, in creation order
	procs  []*process
	fwd    *forwarder
	tokens map[string]string // user name → bearer token
	// closers stop in-process servers (admin socket, fake Azure) at teardown.
	closers []func()
	// hostAliases are the fake cloud's names, to IPs, in the cluster DNS.
	hostAliases map[string]string
}

// Start brings up the control-plane namespace, etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler, and the forwarded port. On
// error everything created so far is removed.
func Start(ctx context.Context, opts Options) (_ *Sandbox, err error) {
	if opts.ID == "" {
		opts.ID = randomHex(3)
	}
	if opts.Assets == "" {
		opts.Assets = os.Getenv("KUBEBUILDER_ASSETS")
	}
	if opts.Assets == "" {
		return nil, errors.New("no control-plane binaries: set KUBEBUILDER_ASSETS (make control-plane builds them)")
	}
	if opts.Dir == "" {
		opts.Dir = filepath.Join(os.TempDir(), Prefix+opts.ID)
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.Azure == nil {
		opts.Azure = fakeazure.NewState()
	}
	if err := checkSocketPaths(opts.Dir); err != nil {
		return nil, err
	}
	if opts.NodeImages == nil {
		return nil, errors.New("the nodes need their images: Options.NodeImages (BuildNodeImages)")
	}
	if opts.NodeAssets == "" {
		var err error
		if opts.NodeAssets, err = NodeAssets(); err != nil {
			return nil, err
		}
	}
	if opts.KubeProxyMode == "" {
		opts.KubeProxyMode = KubeProxyModeFromEnv()
	}
	if err := checkKubeProxyMode(opts.KubeProxyMode); err != nil {
		return nil, err
	}
	s := &Sandbox{ID: opts.ID, Dir: opts.Dir, IssuerURL: issuerURL(), Azure: opts.Azure, opts: opts, log: opts.Log, tokens: map[string]string{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Stop())
		}
	}()
	for _, d := range []string{"pki", "logs", "etcd"} {
		if err := os.MkdirAll(filepath.Join(s.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if s.ca, err = testca.New("aad-pod-identity sandbox CA"); err != nil {
		return nil, err
	}
	if s.Signer, err = fakeazure.NewSigner(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(s.path("pki", "ca.crt"), s.ca.PEM, 0o644); err != nil {
		return nil, err
	}
	if s.cp, err = s.createNetNS("cp"); err != nil {
		return nil, err
	}
	if err := setupControlPlaneNS(s.cp); err != nil {
		return nil, fmt.Errorf("control-plane namespace: %w", err)
	}
	if err := s.startControlPlane(ctx); err != nil {
		return nil, err
	}
	if err := s.serveAdmin(); err != nil {
		return nil, err
	}
	return s, nil
}

// NetNSName is the full name of one of this sandbox's namespaces.
func (s *Sandbox) NetNSName(suffix string) string { return NetNSPrefix(s.ID) + suffix }

func (s *Sandbox) createNetNS(suffix string) (ns.NetNS, error) {
	name := s.NetNSName(suffix)
	n, err := testns.Create(name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.netns = append(s.netns, name)
	s.mu.Unlock()
	return n, nil
}

func (s *Sandbox) path(elem ...string) string {
	return filepath.Join(append([]string{s.Dir}, elem...)...)
}

func (s *Sandbox) start(netns ns.NetNS, name string, args ...string) error {
	cmd := exec.Command(filepath.Join(s.opts.Assets, name), args...)
	p, err := startIn(netns, name, s.path("logs", name+".log"), cmd)
	if err != nil {
		return err
	}
	s.procs = append(s.procs, p)
	return nil
}

func (s *Sandbox) startControlPlane(ctx context.Context) error {
	pki := s.path("pki")
	apiIP := APIServerIP.String()
	serverCrt, serverKey, err := writeKeyPair(s.ca, pki, "apiserver", testca.Leaf{CommonName: "kube-apiserver",
		Hosts: []string{"127.0.0.1", apiIP, kubernetesServiceIP, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		Usage: x509.ExtKeyUsageServerAuth})
	if err != nil {
		return err
	}
	kubeletCrt, kubeletKey, err := writeKeyPair(s.ca, pki, "apiserver-kubelet-client", testca.Leaf{CommonName: "kube-apiserver-kubelet-client",
		Organizations: []string{"system:masters"}, Usage: x509.ExtKeyUsageClientAuth})
	if err != nil {
		return err
	}
	saKey, saPub, err := writeServiceAccountKey(pki)
	if err != nil {
		return err
	}
	if err := s.writeTokens(); err != nil {
		return err
	}

	if err := s.start(s.cp, "etcd",
		"--data-dir", s.path("etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380", "--unsafe-no-fsync"); err != nil {
		return err
	}
	if err := s.start(s.cp, "kube-apiserver",
		"--etcd-servers", "http://127.0.0.1:2379",
		"--bind-address", "0.0.0.0", "--advertise-address", apiIP, "--secure-port", fmt.Sprint(apiserverPort),
		"--tls-cert-file", serverCrt, "--tls-private-key-file", serverKey,
		"--client-ca-file", s.path("pki", "ca.crt"),
		"--token-auth-file", s.path("pki", "tokens.csv"),
		"--authorization-mode", "Node,RBAC",
		"--enable-admission-plugins", "NodeRestriction",
		// The first issuer signs; every one listed validates. Tokens keep
		// their former default audience first.
		"--service-account-issuer", s.IssuerURL, "--service-account-issuer", legacyIssuer,
		"--api-audiences", legacyIssuer+","+s.IssuerURL,
		"--service-account-key-file", saPub, "--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", "10.0.0.0/24",
		"--enable-aggregator-routing=true",
		"--allow-privileged=true",
		"--kubelet-client-certificate", kubeletCrt, "--kubelet-client-key", kubeletKey,
		"--kubelet-preferred-address-types", "InternalIP"); err != nil {
		return err
	}
	if s.fwd, err = newForwarder(s.opts.Listen, s.cp, net.JoinHostPort(apiIP, fmt.Sprint(apiserverPort)), s.log); err != nil {
		return fmt.Errorf("forwarding the apiserver: %w", err)
	}
	s.Config = &rest.Config{
		Host:            "https://" + s.fwd.addr(),
		BearerToken:     s.tokens["admin"],
		TLSClientConfig: rest.TLSClientConfig{CAData: s.ca.PEM},
		QPS:             200, Burst: 400,
	}
	s.Kubeconfig = s.path("kubeconfig")
	if err := s.writeKubeconfig(s.Kubeconfig, s.Config.Host, "admin"); err != nil {
		return err
	}
	adminClient := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.ca.Pool}}}
	if err := s.waitReady(ctx, adminClient, "kube-apiserver", s.Config.Host+"/readyz"); err != nil {
		return err
	}
	inside := fmt.Sprintf("https://%s:%d", apiIP, apiserverPort)
	controllers := []struct {
		bin, user string
		extra     []string
	}{
		{"kube-controller-manager", "system:kube-controller-manager", []string{"--service-account-private-key-file", saKey,
			"--root-ca-file", s.path("pki", "ca.crt"), "--use-service-account-credentials"}},
		{"kube-scheduler", "system:kube-scheduler", nil},
	}
	for _, c := range controllers {
		kc := s.path(c.bin + ".kubeconfig")
		if err := s.writeKubeconfig(kc, inside, c.user); err != nil {
			return err
		}
		args := append([]string{"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
			"--bind-address", "127.0.0.1", "--leader-elect=false"}, c.extra...)
		if err := s.start(s.cp, c.bin, args...); err != nil {
			return err
		}
	}
	// Both serve /healthz on their own self-signed certificates, inside the
	// control-plane namespace.
	insideClient := s.controlPlaneClient(&tls.Config{InsecureSkipVerify: true}) // only a liveness check on loopback
	insideClient.Timeout = 2 * time.Second
	if err := s.waitReady(ctx, insideClient, "kube-controller-manager", "https://127.0.0.1:10257/healthz"); err != nil {
		return err
	}
	if err := s.waitReady(ctx, insideClient, "kube-scheduler", "https://127.0.0.1:10259/healthz"); err != nil {
		return err
	}
	if err := s.waitDefaults(ctx); err != nil {
		return err
	}
	return s.allowAnonymousIssuerDiscovery(ctx)
}

// waitDefaults waits for what the controller manager publishes before pods
// can be admitted and started: the default ServiceAccount and the
// kube-root-ca.crt ConfigMap.
func (s *Sandbox) waitDefaults(ctx context.Context) error {
	c, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if _, err := c.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, nil
		}
		_, err := c.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err == nil, nil
	})
}

// writeTokens writes the apiserver's static token file: the admin (also used
// by the kubelet stand-ins), the controller manager and the scheduler.
func (s *Sandbox) writeTokens() error {
	users := []struct{ name, groups string }{
		{"admin", "system:masters"},
		{"system:kube-controller-manager", ""},
		{"system:kube-scheduler", ""},
	}
	var b strings.Builder
	for _, u := range users {
		s.tokens[u.name] = randomHex(16)
		fmt.Fprintf(&b, "%s,%s,%s,\"%s\"\n", s.tokens[u.name], u.name, u.name, u.groups)
	}
	return os.WriteFile(s.path("pki", "tokens.csv"), []byte(b.String()), 0o600)
}

func (s *Sandbox) writeKubeconfig(path, server, user string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["sandbox"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: s.ca.PEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: s.tokens[user]}
	cfg.Contexts["sandbox"] = &clientcmdapi.Context{Cluster: "sandbox", AuthInfo: user}
	cfg.CurrentContext = "sandbox"
	return clientcmd.WriteToFile(*cfg, path)
}

// waitReady polls url until it answers 200, a process died or ctx ends.
func (s *Sandbox) waitReady(ctx context.Context, client *http.Client, what, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+s.tokens["admin"])
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		for _, p := range s.procs {
			if p.exited() {
				return fmt.Errorf("%s exited while waiting for %s: see %s", p.name, what, s.path("logs", p.name+".log"))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop kills every process and removes every namespace of the sandbox. It is
// safe to call more than once and after a failed Start.
func (s *Sandbox) Stop() error {
	var errs []error
	s.mu.Lock()
	nodes := s.nodes
	s.nodes = nil
	s.mu.Unlock()
	for _, n := range nodes {
		n.cancel()
	}
	for _, n := range nodes {
		<-n.done
	}
	s.mu.Lock()
	closers := s.closers
	s.closers = nil
	s.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	if s.fwd != nil {
		s.fwd.close()
		s.fwd = nil
	}
	for i := len(s.procs) - 1; i >= 0; i-- {
		errs = append(errs, s.procs[i].stop(10*time.Second))
	}
	s.procs = nil
	if s.cp != nil {
		s.cp.Close()
		s.cp = nil
	}
	s.mu.Lock()
	names := s.netns
	s.netns = nil
	s.mu.Unlock()
	for i := len(names) - 1; i >= 0; i-- {
		errs = append(errs, testns.Delete(names[i]))
	}
	return errors.Join(errs...)
}

// kubernetesServiceIP is the kubernetes Service's ClusterIP, the first of
// --service-cluster-ip-range.
const kubernetesServiceIP = "10.0.0.1"

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
