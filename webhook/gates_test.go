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

// Managed and federated modes: a new pod is annotated but not gated, and
// the gate of a pod admitted in standard mode is lifted, by the webhook's
// service account (the pod validator lets no one else lift it).
func TestModesWithoutAssignerLiftGates(t *testing.T) {
	for _, mode := range []config.Mode{config.ModeManaged, config.ModeFederated} {
		t.Run(string(mode), func(t *testing.T) {
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
			startWebhook(t, Options{Mode: mode})
			apply(t, ns, strings.Replace(pod, "name: demo\n", "name: demo-new\n", 1))
			created := getPod(t, ns, "demo-new")
			if identity.HasGate(created) || created.Annotations["aadpodidentity.k8s.io/identities"] != ns+"/demo" {
				t.Fatalf("%s mode: gates %v, annotations %v; want annotated and not gated", mode, created.Spec.SchedulingGates, created.Annotations)
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
		})
	}
}
