// Package suite is the end-to-end suite: this project's components deployed
// into the sandbox cluster (real control plane, simulated nodes, fake
// Azure) the way a user deploys them, driven through kubectl.
package suite

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/aad-pod-identity/aad-pod-identity/e2e/framework"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
)

// env is the one sandbox all tests of the suite share; each test leaves it
// clean for the next.
var env struct {
	sb      *sandbox.Sandbox
	kubectl string
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("e2e suite skipped: the sandbox needs root")
		return m.Run()
	}
	assets, err := framework.Assets()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin, err := os.MkdirTemp("", "aadpi-suite-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bin)
	build := exec.Command("go", "build", "-o", bin+"/", "./e2e/cmd/podinit", "./cmd/...")
	build.Dir = framework.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building binaries: %v\n%s", err, out)
		return 1
	}
	dir, err := os.MkdirTemp("", "aadpi-suite-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sb, err := sandbox.Start(ctx, sandbox.Options{Assets: assets, Dir: dir, Log: logr.Discard(),
		PodInit: filepath.Join(bin, "podinit"), Images: suiteImages(bin)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the sandbox:", err)
		return 1
	}
	// Teardown runs whatever the tests did; a panic in a test still ends
	// the process through here because m.Run recovers and reports it.
	defer func() {
		if err := sb.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "sandbox teardown:", err)
		}
	}()
	if err := sb.AddNodes(ctx, sandbox.NodeOptions{Count: 2, Pools: 2}); err != nil {
		fmt.Fprintln(os.Stderr, "adding nodes:", err)
		return 1
	}
	env.sb, env.kubectl = sb, filepath.Join(assets, "kubectl")
	if _, err := kubectlIn("apply", "--server-side", "-f", filepath.Join(framework.RepoRoot(), "config", "crd")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// suiteImages adds a shell image to the project's images, for client pods.
func suiteImages(bin string) sandbox.Images {
	im := sandbox.DefaultImages(bin)
	if sh, err := exec.LookPath("sh"); err == nil {
		im["sandbox.test/sh"] = sh
	}
	return im
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

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := kubectlIn(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(t.Context(), 250*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last = f()
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: %v (last: %v)", what, err, last)
	}
}

// deployWebhook installs the webhook Deployment and its configurations,
// and waits until the apiserver reaches it through its endpoints.
func deployWebhook(t *testing.T) {
	t.Helper()
	cert, key, err := env.sb.IssueServingCert("aad-pod-identity-webhook.aad-pod-identity.svc")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "webhook.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	manifest := strings.NewReplacer("${CERT}", base64.StdEncoding.EncodeToString(cert), "${KEY}", base64.StdEncoding.EncodeToString(key)).Replace(string(raw))
	kubectl(t, "apply", "-f", filepath.Join(framework.RepoRoot(), "config", "rbac", "webhook", "role.yaml"))
	kubectl(t, "apply", "-f", "-", "stdin:"+manifest)
	rendered, err := exec.Command(env.kubectl, "kustomize", filepath.Join(framework.RepoRoot(), "config", "webhook")).Output()
	if err != nil {
		t.Fatal(err)
	}
	webhooks := strings.NewReplacer(
		"name: webhook-service", "name: aad-pod-identity-webhook",
		"namespace: system", "namespace: aad-pod-identity",
		"    service:", "    caBundle: "+base64.StdEncoding.EncodeToString(env.sb.CACert())+"\n    service:",
	).Replace(string(rendered))
	kubectl(t, "apply", "-f", "-", "stdin:"+webhooks)
	kubectl(t, "-n", "aad-pod-identity", "rollout", "status", "deployment/aad-pod-identity-webhook", "--timeout=120s")
}
