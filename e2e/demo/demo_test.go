//go:build e2e

// Package demo runs `make demo`'s script, the standard walkthrough on the
// sandbox cluster, in standard and in federated mode, so that CI proves it:
// helm install of the chart, the walkthrough's az commands and manifests, the
// demo pod's token through NMI, the cleanup and a teardown that leaves
// nothing behind.
package demo

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

func TestWalkthroughDemo(t *testing.T) {
	framework.RequireRoot(t)
	assets, err := framework.Assets()
	if err != nil {
		t.Fatal(err)
	}
	helm := os.Getenv("HELM")
	if helm == "" {
		t.Fatal("HELM is not set: run the tests through `make test`, which builds helm and sets it")
	}
	bin := t.TempDir()
	if err := framework.BuildBinaries(bin); err != nil {
		t.Fatal(err)
	}
	common := []string{
		"] cleaning up the walkthrough's resources",
		"successfully listed VMSS instances from ARM via AAD Pod Identity",
		"successfully acquired a service principal token using a user-assigned identity",
		"azureidentitybinding.aadpodidentity.k8s.io \"demo-binding\" deleted",
		// The nodes are real: kubectl get nodes shows the runtime.
		"containerd://",
	}
	for _, tt := range []struct {
		mode  string
		wants []string
	}{
		{"standard", []string{"aadpodidentity.k8s.io/assignment: Assigned", "aadpodidentity.k8s.io/identities-ready-at: "}},
		// No assigner: the identity reaches no pool and no record.
		{"federated", []string{"system:serviceaccount:default:default", "No resources found", "az vmss identity show -g "}},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			log := runDemo(t, bin, assets, helm, tt.mode)
			for _, want := range append(slices.Clone(common), tt.wants...) {
				if !strings.Contains(log, want) {
					t.Errorf("output lacks %q:\n%s", want, log)
				}
			}
			if tt.mode == "federated" && strings.Contains(log, "aadpodidentity.k8s.io/assignment: Assigned") {
				t.Errorf("federated mode: the assigner assigned the demo's identity:\n%s", log)
			}
			leftNothing(t, log)
		})
	}
}

// runDemo runs hack/demo.sh in mode and returns its output.
func runDemo(t *testing.T, bin, assets, helm, mode string) string {
	t.Helper()
	// A cold run builds the images and fills the .deb cache in here.
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(framework.RepoRoot(), "hack", "demo.sh"))
	// On timeout the script gets SIGTERM, as from Ctrl-C, and tears the sandbox down.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = time.Minute
	cmd.Env = append(os.Environ(), "BIN="+bin, "HELM="+helm, "KUBEBUILDER_ASSETS="+assets, "KEEP=", "MODE="+mode)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hack/demo.sh: %v\n%s", err, out)
	}
	return string(out)
}

// leftNothing checks the teardown the output reports removed the sandbox's
// namespaces and cgroups.
func leftNothing(t *testing.T, log string) {
	t.Helper()
	m := regexp.MustCompile(`tearing down the sandbox (\S+)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no teardown in the output:\n%s", log)
	}
	left, err := sandbox.ListNetNS(sandbox.NetNSPrefix(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	if cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/" + sandbox.NetNSPrefix(m[1]) + "*"); len(cgroups) > 0 {
		t.Errorf("node cgroups left behind: %v", cgroups)
	}
}
