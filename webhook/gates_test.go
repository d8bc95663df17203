//go:build integration

package webhook

import (
	"context"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// Managed mode: a new pod is annotated but not gated, and the gate of a pod
// admitted in standard mode is lifted, by the webhook's service account
// (the pod validator lets no one else lift it).
func TestManagedModeLiftsGates(t *testing.T) {
	stop := startWebhook(t, Options{Mode: config.ModeStandard})
	ns := newNamespace(t)
	id, binding, pod := walkthrough("demo", demoClientID, demoResourceID)
	apply(t, ns, id)
	apply(t, ns, binding)
	apply(t, ns, pod)
	if !identity.HasGate(getPod(t, ns, "demo")) {
		t.Fatal("standard mode did not gate the demo pod")
	}
	stop()
	startWebhook(t, Options{Mode: config.ModeManaged})
	apply(t, ns, strings.Replace(pod, "name: demo\n", "name: demo-managed\n", 1))
	managed := getPod(t, ns, "demo-managed")
	if identity.HasGate(managed) || managed.Annotations["aadpodidentity.k8s.io/identities"] != ns+"/demo" {
		t.Fatalf("managed mode: gates %v, annotations %v; want annotated and not gated", managed.Spec.SchedulingGates, managed.Annotations)
	}

	asWebhook := rest.CopyConfig(cfg)
	asWebhook.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + strings.Replace(webhookSA, "/", ":", 1)}
	c, err := client.New(asWebhook, client.Options{Scheme: identity.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	g := &gateReleaser{reader: admin, client: c, log: logr.Discard()}
	if _, err := g.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "demo"}}); err != nil {
		t.Fatal(err)
	}
	if got := getPod(t, ns, "demo"); identity.HasGate(got) {
		t.Errorf("gate still on the pod admitted in standard mode: %v", got.Spec.SchedulingGates)
	}
}
