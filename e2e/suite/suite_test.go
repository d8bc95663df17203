//go:build e2e

// Package suite is the end-to-end suite: the chart installed with helm into
// the sandbox cluster (real control plane, simulated nodes, fake Azure) the
// way a user installs it, and driven through kubectl and the API.
package suite

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// Release is the helm release, installed in kube-system as in the walkthrough.
const (
	release   = "aad-pod-identity"
	releaseNS = "kube-system"
)

// gcGracePeriod is the assigner's grace period before it removes an identity
// no pod needs any more; short so the suite can watch it happen.
const gcGracePeriod = 15 * time.Second

// env is the one sandbox all tests of the suite share, started by the first
// test that needs it; each test leaves it clean for the next.
var env struct {
	once    sync.Once
	err     error
	sb      *sandbox.Sandbox
	az      *sandbox.AzureEndpoints
	client  kubernetes.Interface
	kubectl string
	helm    string
	bin     string
	// installed tells whether the release is installed: TestUninstall
	// removes it and the next test that needs it installs it again.
	installed bool
	// images are the nodes' images and cert-manager's chart.
	images *sandbox.NodeImages
}

func TestMain(m *testing.M) {
	// The suite's controller-runtime clients log nothing worth reading.
	ctrllog.SetLogger(logr.Discard())
	code := m.Run()
	tearDown()
	os.Exit(code)
}

// installed returns once the sandbox runs with the chart installed, starting
// it or installing it when the test is the first to need it, so that any
// test can run alone.
func installed(t testing.TB) {
	t.Helper()
	started(t)
	if !env.installed {
		if err := helmInstall(); err != nil {
			t.Fatal(err)
		}
		env.installed = true
	}
}

// releaseOfItsOwn is installed for a test that upgrades the release with
// values of its own: the release is uninstalled when the test ends, so that
// the next test installs it afresh with the suite's values.
func releaseOfItsOwn(t testing.TB) {
	t.Helper()
	installed(t)
	t.Cleanup(func() {
		if err := helmUninstall(); err != nil {
			t.Error(err)
		}
	})
}

// uninstalled returns once the sandbox runs without the release.
func uninstalled(t testing.TB) {
	t.Helper()
	started(t)
	if env.installed {
		if err := helmUninstall(); err != nil {
			t.Fatal(err)
		}
	}
}

func started(t testing.TB) {
	t.Helper()
	framework.RequireRoot(t)
	env.once.Do(func() { env.err = setUp() })
	if env.err != nil {
		t.Fatalf("e2e suite: %v", env.err)
	}
}

// setUp builds the binaries and starts the sandbox with two nodes in two
// pools.
func setUp() error {
	assets, err := framework.Assets()
	if err != nil {
		return err
	}
	env.helm = os.Getenv("HELM")
	if env.helm == "" {
		return fmt.Errorf("HELM is not set: run the tests through `make test-e2e`, which builds helm and sets it")
	}
	if env.bin, err = os.MkdirTemp("", "aadpi-suite-bin-"); err != nil {
		return err
	}
	if err := framework.BuildBinaries(env.bin); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "aadpi-suite-")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	opts := sandbox.Options{Assets: assets, Dir: dir, Log: logr.Discard()}
	if opts.NodeAssets, err = sandbox.NodeAssets(); err != nil {
		return err
	}
	if env.images, err = sandbox.BuildNodeImages(ctx, framework.RepoRoot(), filepath.Join(dir, "images"), opts.NodeAssets); err != nil {
		return err
	}
	opts.NodeImages = env.images
	sb, err := sandbox.Start(ctx, opts)
	if err != nil {
		return fmt.Errorf("starting the sandbox: %w", err)
	}
	env.sb, env.kubectl = sb, filepath.Join(assets, "kubectl")
	if env.az, err = sb.ServeAzure(); err != nil {
		return err
	}
	if err := sb.AddNodes(ctx, sandbox.NodeOptions{Count: 2, Pools: 2}); err != nil {
		return fmt.Errorf("adding nodes: %w", err)
	}
	if env.client, err = kubernetes.NewForConfig(sb.Config); err != nil {
		return err
	}
	return installCertManager()
}

// installCertManager installs cert-manager's chart as docs/install.md does,
// with the sandbox's values (sandbox.NodeImages.CertManagerValues).
func installCertManager() error {
	out, err := exec.Command(env.helm, "install", sandbox.CertManagerRelease, env.images.CertManagerChart(), "--kubeconfig", env.sb.Kubeconfig,
		"--namespace", sandbox.CertManagerNamespace, "--create-namespace", "-f", env.images.CertManagerValues(),
		"--wait", "--timeout", "5m").CombinedOutput()
	if err != nil {
		return fmt.Errorf("helm install cert-manager: %w\n%s", err, out)
	}
	return nil
}

// tearDown stops the sandbox, which kills its processes and removes its
// namespaces, whatever the tests did.
func tearDown() {
	if env.sb != nil {
		if err := env.sb.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "sandbox teardown:", err)
		}
		_ = os.RemoveAll(env.sb.Dir)
	}
	if env.bin != "" {
		_ = os.RemoveAll(env.bin)
	}
}

// helmInstall installs the chart as docs/install.md says, with the fake
// Azure's endpoints and service principal, certificates from cert-manager,
// service principals enabled and a short GC grace period.
func helmInstall() error { return helmRelease("install") }

// helmRelease runs helm install or upgrade with the suite's values and
// extra flags.
func helmRelease(verb string, extra ...string) error {
	chart := filepath.Join(framework.RepoRoot(), "charts", "aad-pod-identity")
	args := []string{verb, release, chart, "--kubeconfig", env.sb.Kubeconfig,
		"--namespace", releaseNS,
		"--set", "certManager.enabled=true",
		"--set", "assigner.azure.source=secret",
		"--set-string", "assigner.azure.tenantID=" + env.sb.Azure.TenantID,
		"--set-string", "assigner.azure.subscriptionID=" + sandbox.SubscriptionID,
		"--set-string", "assigner.azure.resourceGroup=" + sandbox.NodeResourceGroup,
		"--set-string", "assigner.azure.clientID=" + env.az.Principal.AppID,
		"--set-string", "assigner.azure.clientSecret=" + env.az.Principal.Secret,
		"--set-string", "assigner.armEndpoint=" + env.az.ARMEndpoint,
		"--set-string", "assigner.aadAuthorityHost=" + env.az.AADAuthorityHost,
		"--set-string", "assigner.gcGracePeriod=" + gcGracePeriod.String(),
		"--set", "nmi.enableServicePrincipals=true",
		// TestRealNode taints a node as a pool configured for it would.
		"--set", "nmi.removeStartupTaint=true",
		// The fake Azure AD is the sovereign cloud the SP case names in adEndpoint.
		"--set-string", "nmi.aadAuthorityHost=" + env.az.AADAuthorityHost,
		// The nodes' azure.json, as AKS writes it, names the kubelet identity.
		"--set-string", "nodeIdentity.cloudConfig=" + env.az.CloudConfig,
		// Each node's containerd socket (the chart's default path is the
		// same on every node, which nodes sharing one filesystem cannot
		// have).
		"--set-string", "nmi.criSocket=" + env.sb.ChartCRISocket(),
		"--wait", "--timeout", "3m"}
	out, err := exec.Command(env.helm, append(args, extra...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("helm %s: %w\n%s", verb, err, out)
	}
	return nil
}

// helmUninstall removes the release; the next test that needs it installs
// it again.
func helmUninstall() error {
	out, err := exec.Command(env.helm, "uninstall", release, "--kubeconfig", env.sb.Kubeconfig, "--namespace", releaseNS, "--wait", "--timeout", "3m").CombinedOutput()
	if err != nil {
		return fmt.Errorf("helm uninstall: %w\n%s", err, out)
	}
	env.installed = false
	return nil
}

// kubectlIn runs kubectl against the sandbox, stdin from the last argument
// when it starts with "stdin:".
func kubectlIn(args ...string) (string, error) {
	var stdin string
	if n := len(args); n > 0 && strings.HasPrefix(args[n-1], "stdin:") {
		stdin, args = strings.TrimPrefix(args[n-1], "stdin:"), args[:n-1]
	}
	cmd := exec.Command(env.kubectl, append([]string{"--kubeconfig", env.sb.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := kubectlIn(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// suiteCase is one subtest of a suite test.
type suiteCase struct {
	name string
	run  func(*testing.T)
}

// runInstalled runs each case as a subtest on the installed release,
// installing it again first when a case before has removed it.
func runInstalled(t *testing.T, cases []suiteCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			installed(t)
			c.run(t)
		})
	}
}

// componentPods lists the names of a chart component's pods, on one node
// when node is set.
func componentPods(t *testing.T, component, node string) []string {
	t.Helper()
	args := []string{"-n", releaseNS, "get", "pods", "-l", "app.kubernetes.io/component=" + component, "-o", "name"}
	if node != "" {
		args = append(args, "--field-selector", "spec.nodeName="+node)
	}
	return strings.Fields(kubectl(t, args...))
}
