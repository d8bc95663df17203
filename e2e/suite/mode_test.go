//go:build e2e

package suite

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	"github.com/aad-pod-identity/aad-pod-identity/nmi"
)

// TestManagedMode switches a release from standard to managed mode and
// back with helm upgrade. In managed mode no assigner runs; a pod gated in
// standard mode (here while the assigner was scaled to zero) is released by
// the webhook; its identity, not on the pool, is refused with the command
// that assigns it and a Warning event, then served once the admin ran
// `az vmss identity assign`; a pod running since standard mode keeps its
// token throughout. Back in standard mode the admin's identity is external
// to the assigner, so it is served only with nmi.serveExternalIdentities
// (docs/install.md). The release is uninstalled at the end.
func TestManagedMode(t *testing.T) {
	releaseOfItsOwn(t)
	n := node(t, 0)
	before := userIdentity(t, "e2e-mode-before", "e2e-mode-before")
	demoPod{Name: "mode-before", Labels: map[string]string{aadv1.BindingLabel: "e2e-mode-before"}, ClientID: before.ClientID, Node: n.Name}.create(t)
	running(t, "default", "mode-before")
	waitFor(t, "default", "mode-before", userToken, time.Time{}, time.Minute)

	kubectl(t, "-n", releaseNS, "scale", "deployment", release+"-assigner", "--replicas=0")
	framework.Eventually(t, time.Minute, "the assigner scaled to zero", func() error {
		if pods := componentPods(t, "assigner", ""); len(pods) > 0 {
			return fmt.Errorf("still running: %v", pods)
		}
		return nil
	})
	admin := userIdentity(t, "e2e-mode-admin", "e2e-mode-admin")
	demoPod{Name: "mode-admin", Labels: map[string]string{aadv1.BindingLabel: "e2e-mode-admin"}, ClientID: admin.ClientID, Node: n.Name}.create(t)
	if pod := getPod(t, "mode-admin"); !identity.HasGate(pod) {
		t.Fatalf("standard mode did not gate the pod: %v", pod.Spec.SchedulingGates)
	}

	if err := helmRelease("upgrade", "--set", "policy.mode=managed"); err != nil {
		t.Fatal(err)
	}
	if pods := componentPods(t, "assigner", ""); len(pods) > 0 {
		t.Errorf("assigner pods in managed mode: %v", pods)
	}
	running(t, "default", "mode-admin")
	since := time.Now()
	waitFor(t, "default", "mode-before", userToken, since, time.Minute)

	pool := n.Pool.Name
	fix := fmt.Sprintf("az vmss identity assign -g %s -n %s --identities %s", sandbox.NodeResourceGroup, pool, admin.ResourceID)
	framework.Eventually(t, time.Minute, "the IdentityNotAssigned event", func() error {
		events, err := env.client.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=mode-admin"})
		if err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == nmi.EventIdentityNotAssigned && e.Type == corev1.EventTypeWarning {
				if !strings.Contains(e.Message, fix) {
					return fmt.Errorf("event %q does not name %q", e.Message, fix)
				}
				return nil
			}
		}
		return fmt.Errorf("none among %d events", len(events.Items))
	})
	never(t, "default", "mode-admin", userToken)

	out, err := exec.Command(filepath.Join(env.bin, "sandbox"), append([]string{"az", "--dir", env.sb.Dir}, strings.Fields(fix)[1:]...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", fix, err, out)
	}
	waitFor(t, "default", "mode-admin", userToken, time.Now(), time.Minute)

	if err := helmRelease("upgrade", "--set", "policy.mode=standard", "--set", "policy.serveExternalIdentities=true"); err != nil {
		t.Fatal(err)
	}
	since = time.Now()
	for _, name := range []string{"mode-before", "mode-admin"} {
		waitFor(t, "default", name, userToken, since, time.Minute)
	}
}

func getPod(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	pod, err := env.client.CoreV1().Pods("default").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}
