// Package framework is the one place tests start the real control plane:
// envtest with this project's CRDs and, when asked, its webhook
// configurations rendered from config/webhook.
package framework

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// StaticBuild is `go build` as the Makefile and the images run it (static,
// -trimpath, stripped) in the repository, so that every build shares one
// compile of each package, even one started from a race test, whose own
// environment has cgo on.
func StaticBuild(out string, pkgs ...string) *exec.Cmd {
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", out}, pkgs...)...)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd
}

// BuildBinaries builds every program of the project (the components, the
// sandbox and its pod programs) into dir, as `make sandbox-build` does.
func BuildBinaries(dir string) error {
	build := StaticBuild(dir+"/", "./cmd/...", "./e2e/cmd/...")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building binaries: %w\n%s", err, out)
	}
	return nil
}

// Assets is the directory holding etcd, kube-apiserver and kubectl:
// KUBEBUILDER_ASSETS when set (the Makefile sets it), else the newest
// complete build of `make control-plane` in the tools cache, so that a plain
// `go test` finds it too.
func Assets() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		var err error
		if dir, err = cachedAssets(); err != nil {
			return "", err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err != nil {
		return "", fmt.Errorf("no kube-apiserver in %s: run `make control-plane`: %w", dir, err)
	}
	return dir, nil
}

// cachedAssets finds the Makefile's builds,
// $HOME/.cache/aad-pod-identity/k8s-<version>-etcd-<version>, each complete
// once it holds .done; the most recently finished one wins.
func cachedAssets() (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("KUBEBUILDER_ASSETS is not set and there is no home directory to look for `make control-plane`'s build in: %w", err)
	}
	pattern := filepath.Join(home, ".cache", "aad-pod-identity", "k8s-*-etcd-*", ".done")
	done, _ := filepath.Glob(pattern) // the pattern is well formed
	var newest string
	var newestAt time.Time
	for _, d := range done {
		if fi, err := os.Stat(d); err == nil && fi.ModTime().After(newestAt) {
			newest, newestAt = filepath.Dir(d), fi.ModTime()
		}
	}
	if newest == "" {
		return "", fmt.Errorf("no control plane: KUBEBUILDER_ASSETS is not set and no finished build matches %s; run `make control-plane`", filepath.Dir(pattern))
	}
	return newest, nil
}

// Options choose what the environment installs.
type Options struct {
	// Webhooks installs config/webhook pointing at a local webhook server.
	Webhooks bool
	// CRDDirectories are installed besides the project's CRDs.
	CRDDirectories []string
	// ServiceAccountKeyFile is a PEM private key the apiserver signs
	// service-account tokens with ("": envtest's own, ECDSA). An RSA key
	// makes them RS256, as AKS's are and as Azure AD's federation wants;
	// the issuer's keys are then published on envtest's loopback address,
	// where a verifier can fetch them.
	ServiceAccountKeyFile string
}

// NewEnvironment returns an envtest environment for this project, not yet
// started.
func NewEnvironment(opts Options) (*envtest.Environment, error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     append([]string{filepath.Join(RepoRoot(), "config", "crd")}, opts.CRDDirectories...),
		ErrorIfCRDPathMissing: true,
	}
	if opts.ServiceAccountKeyFile != "" {
		env.ControlPlane.GetAPIServer().Configure().
			Set("service-account-key-file", opts.ServiceAccountKeyFile).
			Set("service-account-signing-key-file", opts.ServiceAccountKeyFile).
			// The discovery document's jwks_uri names this host; by
			// default the node's address, where envtest does not listen.
			Set("external-hostname", "127.0.0.1")
	}
	if opts.Webhooks {
		mutating, validating, err := WebhookConfigurations()
		if err != nil {
			return nil, err
		}
		env.WebhookInstallOptions = envtest.WebhookInstallOptions{MutatingWebhooks: mutating, ValidatingWebhooks: validating}
	}
	return env, nil
}

// StartEnvironment starts a control plane of its own for t and stops it,
// with whatever a half-way start left running, when t ends.
func StartEnvironment(t testing.TB, opts Options) (*envtest.Environment, *rest.Config) {
	t.Helper()
	env, err := NewEnvironment(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	return env, cfg
}

// WebhookConfigurations renders config/webhook with kubectl kustomize, the
// same way a user would apply it.
func WebhookConfigurations() ([]*admissionregistrationv1.MutatingWebhookConfiguration, []*admissionregistrationv1.ValidatingWebhookConfiguration, error) {
	assets, err := Assets()
	if err != nil {
		return nil, nil, err
	}
	var stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(assets, "kubectl"), "kustomize", filepath.Join(RepoRoot(), "config", "webhook"))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, nil, fmt.Errorf("kubectl kustomize config/webhook: %w: %s", err, stderr.String())
	}
	var (
		mutating   []*admissionregistrationv1.MutatingWebhookConfiguration
		validating []*admissionregistrationv1.ValidatingWebhookConfiguration
	)
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, nil, fmt.Errorf("decoding rendered webhooks: %w", err)
		}
		js, err := json.Marshal(raw)
		if err != nil {
			return nil, nil, err
		}
		switch raw["kind"] {
		case "MutatingWebhookConfiguration":
			m := &admissionregistrationv1.MutatingWebhookConfiguration{}
			if err := json.Unmarshal(js, m); err != nil {
				return nil, nil, fmt.Errorf("decoding %s: %w", raw["kind"], err)
			}
			mutating = append(mutating, m)
		case "ValidatingWebhookConfiguration":
			v := &admissionregistrationv1.ValidatingWebhookConfiguration{}
			if err := json.Unmarshal(js, v); err != nil {
				return nil, nil, fmt.Errorf("decoding %s: %w", raw["kind"], err)
			}
			validating = append(validating, v)
		}
	}
	return mutating, validating, nil
}

// RequireRoot fails the test unless it runs as root, which the e2e-tagged
// suites need for network namespaces and iptables.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces, iptables): run it through `make test-e2e` as root")
	}
}
