package suite

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

const identityManifest = `apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: demo
spec:
  type: 0
  resourceID: /subscriptions/00000000-0000-0000-0000-00000000cafe/resourceGroups/MC_sandbox_sandbox_westus2/providers/Microsoft.ManagedIdentity/userAssignedIdentities/demo
  clientID: 6a3b6f2e-1c5e-4d8a-9a51-3c9f2c1d7e11
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata:
  name: demo-binding
spec:
  azureIdentity: demo
  selector: demo
`

func podManifest(name string, labelled bool) string {
	label := ""
	if labelled {
		label = "\n  labels:\n    aadpodidbinding: demo"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s%s
spec:
  containers:
  - name: main
    image: sandbox.test/sh
    command: ["sh", "-c", "sleep 600"]
`, name, label)
}

// TestWebhookInSandbox runs the real webhook as a Deployment: the apiserver
// calls it at its pod IPs (aggregator routing, no kube-proxy). Labelled pods
// are admitted with the resolution annotations and the scheduling gate;
// with the webhook down they are rejected (fail closed) while unlabelled
// pods are still created (objectSelector).
func TestWebhookInSandbox(t *testing.T) {
	deployWebhook(t)
	kubectl(t, "apply", "-f", "-", "stdin:"+identityManifest)
	t.Cleanup(func() {
		_, _ = kubectlIn("delete", "pod", "labelled", "unlabelled", "--ignore-not-found", "--wait=false", "--grace-period=0", "--force")
		_, _ = kubectlIn("delete", "azureidentitybinding", "demo-binding", "--ignore-not-found")
		_, _ = kubectlIn("delete", "azureidentity", "demo", "--ignore-not-found")
		_, _ = kubectlIn("-n", "aad-pod-identity", "scale", "deployment/aad-pod-identity-webhook", "--replicas=2")
	})

	eventually(t, 60*time.Second, "labelled pod admitted by the webhook", func() error {
		_, err := kubectlIn("apply", "-f", "-", "stdin:"+podManifest("labelled", true))
		return err
	})
	ann := kubectl(t, "get", "pod", "labelled", "-o", `jsonpath={.metadata.annotations.aadpodidentity\.k8s\.io/identities} {.spec.schedulingGates[*].name}`)
	if want := "default/demo aadpodidentity.k8s.io/identity-assignment"; strings.TrimSpace(ann) != want {
		t.Fatalf("labelled pod: got %q, want %q", ann, want)
	}
	kubectl(t, "delete", "pod", "labelled", "--wait=false")

	kubectl(t, "-n", "aad-pod-identity", "scale", "deployment/aad-pod-identity-webhook", "--replicas=0")
	eventually(t, 60*time.Second, "webhook pods gone", func() error {
		out, err := kubectlIn("-n", "aad-pod-identity", "get", "pods", "-o", "name")
		if err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("pods left: %q %v", out, err)
		}
		return nil
	})
	eventually(t, 30*time.Second, "labelled pod rejected", func() error {
		out, err := kubectlIn("create", "-f", "-", "stdin:"+podManifest("labelled2", true))
		if err == nil {
			_, _ = kubectlIn("delete", "pod", "labelled2", "--wait=false")
			return fmt.Errorf("created with the webhook down")
		}
		if !strings.Contains(out, "failed calling webhook") {
			return fmt.Errorf("unexpected error: %s", out)
		}
		return nil
	})
	kubectl(t, "create", "-f", "-", "stdin:"+podManifest("unlabelled", false))
}
