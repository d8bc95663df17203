//go:build integration

package config

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// Each component refuses to start on an invalid configuration, saying
// which field is wrong, before it touches the cluster.
func TestBinariesRefuseInvalidConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "config.yaml")
	body := header + "policy:\n  mode: addon\nnmi:\n  iptablesBackend: ebpf\n"
	if err := os.WriteFile(bad, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	unknown := filepath.Join(dir, "unknown.yaml")
	if err := os.WriteFile(unknown, []byte(header+"webhook:\n  adoptPreexisting: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, component := range []string{"webhook", "assigner", "nmi"} {
		t.Run(component, func(t *testing.T) {
			bin := filepath.Join(dir, component)
			build := framework.StaticBuild(bin, "./cmd/"+component)
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("building %s: %v\n%s", component, err, out)
			}
			for path, want := range map[string][]string{bad: {"policy.mode", `"addon"`, "nmi.iptablesBackend"}, unknown: {`unknown field "webhook.adoptPreexisting"`}} {
				cmd := exec.Command(bin, "--config", path, "--kubeconfig", filepath.Join(dir, "none"))
				cmd.Env = append(os.Environ(), "NODE_NAME=n", "POD_NAMESPACE=ns")
				out, err := cmd.CombinedOutput()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() == 0 {
					t.Fatalf("%s started with %s: %v\n%s", component, path, err, out)
				}
				for _, w := range want {
					if !strings.Contains(string(out), w) {
						t.Errorf("%s's refusal does not name %s:\n%s", component, w, out)
					}
				}
			}
		})
	}
}
