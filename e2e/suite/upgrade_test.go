//go:build e2e

package suite

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	v18 "github.com/aad-pod-identity/aad-pod-identity/internal/testing/v18"
	"github.com/aad-pod-identity/aad-pod-identity/webhook"
)

var ourCRDs = []string{
	"azureidentities.aadpodidentity.k8s.io", "azureidentitybindings.aadpodidentity.k8s.io",
	"azureassignedidentities.aadpodidentity.k8s.io", "azurepodidentityexceptions.aadpodidentity.k8s.io",
}

// TestUpgradeFrom18: `helm upgrade --install` of this chart over a cluster
// as aad-pod-identity 1.8 leaves it once its MIC and NMI are stopped (its
// CRDs, objects and, in standard mode, MIC's per-pod AzureAssignedIdentity;
// its aad-metadata chain on every node; the identity on the pool, put there
// by MIC or, in managed mode and with the AKS add-on, by the admins; pods
// running since then, asking for tokens every 100 ms). The labelled pod
// gets its token back (its refusals are counted and logged); an unlabelled
// pod and one bound to nothing never get one, and no pod reaches IMDS; the
// identity stays on the pool throughout. In standard mode it is now
// recorded as the assigner's own and 1.8's record is deleted; in managed
// mode no assigner runs.
func TestUpgradeFrom18(t *testing.T) {
	t.Run("standard", func(t *testing.T) { upgradeFrom18(t, false) })
	t.Run("managed", func(t *testing.T) { upgradeFrom18(t, true) })
}

func upgradeFrom18(t *testing.T, managed bool) {
	uninstalled(t)
	t.Cleanup(func() {
		if env.installed {
			if err := helmUninstall(); err != nil {
				t.Error(err)
			}
		}
	})
	n := node(t, 0)

	// 1.8's world. Deleting our CRDs deletes every object under them.
	kubectl(t, append([]string{"delete", "crd", "--wait", "--ignore-not-found"}, ourCRDs...)...)
	kubectl(t, "apply", "-f", "-", "stdin:"+v18.CRDs)
	kubectl(t, append([]string{"wait", "--for=condition=Established", "--timeout=60s", "crd"}, ourCRDs...)...)
	install18Chain(t, n)
	id := env.sb.Azure.CreateIdentity(sandbox.SubscriptionID, sandbox.NodeResourceGroup, "e2e-v18")
	t.Cleanup(func() { env.sb.Azure.DeleteIdentity(id.ResourceID) })
	if err := env.sb.Azure.SetUserAssigned(n.Pool.ID, id.ResourceID, true); err != nil {
		t.Fatal(err)
	}
	const period = 100 * time.Millisecond
	demoPod{Name: "v18-app", Labels: map[string]string{aadv1.BindingLabel: "v18-app"}, ClientID: id.ClientID, Node: n.Name, Period: period}.create(t)
	demoPod{Name: "v18-unlabelled", ClientID: id.ClientID, Node: n.Name, Period: period}.create(t)
	demoPod{Name: "v18-unbound", Labels: map[string]string{aadv1.BindingLabel: "v18-nothing"}, ClientID: id.ClientID, Node: n.Name, Period: period}.create(t)
	w := v18.World{Namespace: "default", Identity: "e2e-v18", Selector: "v18-app", ResourceID: id.ResourceID, ClientID: id.ClientID, Pod: "v18-app", Node: n.Name, Managed: managed}
	kubectl(t, "apply", "-f", "-", "stdin:"+w.Objects())
	t.Cleanup(func() {
		_, _ = kubectlIn("-n", "default", "delete", "azureidentitybinding", w.Identity+"-binding", "--ignore-not-found")
		_, _ = kubectlIn("-n", "default", "delete", "azureidentity", w.Identity, "--ignore-not-found")
	})
	for _, name := range []string{"v18-app", "v18-unlabelled", "v18-unbound"} {
		running(t, "default", name)
	}
	pool := watchPool(n.Pool.ID, id.ClientID)

	start := time.Now()
	// Helm 4 server-side applies crds/ and refuses fields kubectl set; the
	// chart's hook replaces the CRDs anyway (docs/migration.md).
	flags := []string{"--install", "--skip-crds"}
	if managed {
		flags = append(flags, "--set", "policy.mode=managed")
	}
	if err := helmRelease("upgrade", flags...); err != nil {
		t.Fatal(err)
	}
	env.installed = true
	installedAt := time.Now()
	first := waitFor(t, "default", "v18-app", userToken, start, 2*time.Minute)
	time.Sleep(3 * time.Second) // the pod keeps asking: every answer from now on must be a token
	// The demo asks for the identity's token and the default one each
	// period; both are the pod's, so both must be served from here on.
	var refused, after int
	for _, a := range attempts(t, "default", "v18-app") {
		denied := a.Msg == userDenied || a.Msg == defaultError
		switch {
		case a.At.Before(start) || !denied:
		case a.At.Before(first.At):
			refused++
		default:
			after++
			t.Errorf("refused after the first token: %s", a.Line)
		}
	}
	t.Logf("upgrade from 1.8 (managed: %t): helm upgrade --install took %s; the running pod's first token %s after it started; %d requests refused meanwhile (two every %s), %d after",
		managed, installedAt.Sub(start).Round(100*time.Millisecond), first.At.Sub(start).Round(100*time.Millisecond), refused, period, after)

	for _, name := range []string{"v18-unlabelled", "v18-unbound"} {
		never(t, "default", name, userToken)
		if len(attempts(t, "default", name)) < 10 {
			t.Errorf("pod %s asked too rarely to prove anything", name)
		}
	}
	notReachedIMDS(t, getPod(t, "v18-app"))

	app := getPod(t, "v18-app")
	if got := app.Annotations[aadv1.AnnotationIdentities]; got != "default/"+w.Identity {
		t.Errorf("adopted pod's identities = %q", got)
	}
	if got := getPod(t, "v18-unlabelled").Annotations; len(got) != 0 {
		t.Errorf("unlabelled pod annotated: %v", got)
	}
	adoptedEvent(t, "v18-app")
	if missing := pool(); missing > 0 {
		t.Errorf("the identity was missing from %s in %d of the checks while the pod used it", n.Pool.Name, missing)
	}
	if sub := kubectl(t, "get", "crd", "azureassignedidentities.aadpodidentity.k8s.io", "-o", "jsonpath={.spec.versions[0].subresources}"); !strings.Contains(sub, "status") {
		t.Errorf("1.8's CRD left in place: subresources %q", sub)
	}
	if managed {
		if pods := componentPods(t, "assigner", ""); len(pods) > 0 {
			t.Errorf("assigner pods in managed mode: %v", pods)
		}
		return
	}

	p, err := nodepool.ParseID(n.Pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec := kubectl(t, "-n", releaseNS, "get", "azureassignedidentity", identity.RecordName(p), "-o",
		fmt.Sprintf(`jsonpath={.status.identities[?(@.azureIdentityRef.name=="%s")].state} {.status.identities[?(@.azureIdentityRef.name=="%s")].external} {.status.identities[?(@.azureIdentityRef.name=="%s")].adoptedFrom}`, w.Identity, w.Identity, w.Identity))
	if want := fmt.Sprintf("Assigned  default/%s", w.LegacyRecordName()); rec != want {
		t.Errorf("record of 1.8's identity: %q, want %q (Assigned, ours, adopted from 1.8's record)", rec, want)
	}
	framework.Eventually(t, time.Minute, "1.8's per-pod record deleted", func() error {
		out := kubectl(t, "-n", "default", "get", "azureassignedidentities", "-o", "name")
		if strings.Contains(out, w.LegacyRecordName()) {
			return fmt.Errorf("still there: %s", out)
		}
		return nil
	})
}

// install18Chain puts aad-pod-identity 1.8's NMI rules in the node's nat
// table: metadata traffic DNATed to the node's address, port 2579, where
// nothing listens once 1.8's NMI is gone; its own traffic let through; a
// commented jump. They are removed at the end if still there.
func install18Chain(t *testing.T, n *sandbox.Node) {
	t.Helper()
	const chain, comment = "aad-metadata", "AAD Pod Identity"
	ipt := func(args ...string) error {
		out, err := exec.Command("ip", append([]string{"netns", "exec", n.NetNS, "iptables", "-w", "5", "-t", "nat"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	metadata := sandbox.MetadataIP.String() + "/32"
	for _, args := range [][]string{
		{"-N", chain},
		{"-A", chain, "!", "-s", n.IP + "/32", "-d", metadata, "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", n.IP + ":2579"},
		{"-A", chain, "-s", n.IP + "/32", "-d", metadata, "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "ACCEPT"},
		{"-A", chain, "-j", "RETURN"},
		{"-I", "PREROUTING", "1", "-m", "comment", "--comment", comment, "-j", chain},
	} {
		if err := ipt(args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = ipt("-D", "PREROUTING", "-m", "comment", "--comment", comment, "-j", chain)
		rules, err := natRules(n)
		if err == nil && strings.Contains(rules, "-N "+chain) && !strings.Contains(rules, "-j "+chain) {
			_ = ipt("-F", chain)
			_ = ipt("-X", chain)
		}
	})
}

// watchPool checks every 100 ms that the identity is on the pool, until
// the returned function is called; that returns how many checks missed it.
func watchPool(poolID, clientID string) (stop func() int) {
	var (
		done    = make(chan struct{})
		missing atomic.Int64
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for tick := time.NewTicker(100 * time.Millisecond); ; {
			select {
			case <-done:
				tick.Stop()
				return
			case <-tick.C:
				if !env.sb.Azure.Assigned(poolID, clientID) {
					missing.Add(1)
				}
			}
		}
	}()
	var once sync.Once
	return func() int {
		once.Do(func() { close(done); wg.Wait() })
		return int(missing.Load())
	}
}

// adoptedEvent fails unless the pod has the webhook's adoption event.
func adoptedEvent(t *testing.T, pod string) {
	t.Helper()
	framework.Eventually(t, 30*time.Second, "the IdentityAdopted event", func() error {
		events, err := env.client.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
		if err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == webhook.EventAdopted && e.Type == corev1.EventTypeNormal {
				return nil
			}
		}
		return fmt.Errorf("none among %d events", len(events.Items))
	})
}
