//go:build e2e

package suite

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// userIdentity creates a user-assigned identity in the fake Azure, as the
// walkthrough's `az identity create` does, with its AzureIdentity and an
// AzureIdentityBinding for selector in namespace default, all removed when
// the test ends.
func userIdentity(t testing.TB, name, selector string) fakeazure.Identity {
	t.Helper()
	return annotatedIdentity(t, name, selector, nil)
}

// annotatedIdentity is userIdentity with annotations on the AzureIdentity
// from its creation.
func annotatedIdentity(t testing.TB, name, selector string, annotations map[string]string) fakeazure.Identity {
	t.Helper()
	id := env.sb.Azure.CreateIdentity(sandbox.SubscriptionID, sandbox.NodeResourceGroup, name)
	t.Cleanup(func() { env.sb.Azure.DeleteIdentity(id.ResourceID) })
	applyAnnotatedIdentity(t, name, selector, annotations, fmt.Sprintf("type: 0\n  resourceID: %s\n  clientID: %s", id.ResourceID, id.ClientID))
	return id
}

// applyIdentity applies an AzureIdentity with the given spec (YAML indented
// for the spec block) and a binding <name>-binding for selector.
func applyIdentity(t testing.TB, name, selector, spec string) {
	t.Helper()
	applyAnnotatedIdentity(t, name, selector, nil, spec)
}

// applyAnnotatedIdentity is applyIdentity with annotations on the
// AzureIdentity.
func applyAnnotatedIdentity(t testing.TB, name, selector string, annotations map[string]string, spec string) {
	t.Helper()
	var meta strings.Builder
	if len(annotations) > 0 {
		meta.WriteString("\n  annotations:")
		for k, v := range annotations {
			fmt.Fprintf(&meta, "\n    %s: %q", k, v)
		}
	}
	kubectl(t, "apply", "-f", "-", "stdin:"+fmt.Sprintf(`apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: %[1]s
  namespace: default%[4]s
spec:
  %[3]s
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata:
  name: %[1]s-binding
  namespace: default
spec:
  azureIdentity: %[1]s
  selector: %[2]s
`, name, selector, spec, meta.String()))
	t.Cleanup(func() {
		_, _ = kubectlIn("-n", "default", "delete", "azureidentitybinding", name+"-binding", "--ignore-not-found")
		_, _ = kubectlIn("-n", "default", "delete", "azureidentity", name, "--ignore-not-found")
	})
}

// demoPod is a pod running the walkthrough's demo image, which asks IMDS
// for tokens every period and logs each outcome.
type demoPod struct {
	Name, Namespace string
	Labels          map[string]string
	// ClientID is the user-assigned identity the demo asks a token for.
	ClientID string
	// Node pins the pod to a node through a nodeSelector (scheduling gates
	// forbid spec.nodeName).
	Node   string
	Period time.Duration
	// Modify changes the pod before it is created.
	Modify func(*corev1.Pod)
}

func (p demoPod) object() *corev1.Pod {
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	if p.Period == 0 {
		p.Period = time.Second
	}
	if p.ClientID == "" {
		p.ClientID = "00000000-0000-0000-0000-000000000000"
	}
	sel := map[string]string{"kubernetes.io/os": "linux"}
	if p.Node != "" {
		sel["kubernetes.io/hostname"] = p.Node
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels},
		Spec: corev1.PodSpec{
			NodeSelector: sel,
			Containers: []corev1.Container{{
				Name:  "demo",
				Image: "mcr.microsoft.com/oss/azure/aad-pod-identity/demo:v1.7.5",
				Args: []string{"--subscription-id=" + sandbox.SubscriptionID, "--resource-group=" + sandbox.NodeResourceGroup,
					"--identity-client-id=" + p.ClientID, "--period=" + p.Period.String()},
			}},
		},
	}
	if p.Modify != nil {
		p.Modify(pod)
	}
	return pod
}

// create creates the pod and deletes it, waiting until it is gone, when the
// test ends.
func (p demoPod) create(t *testing.T) *corev1.Pod {
	t.Helper()
	pod, err := env.client.CoreV1().Pods(p.object().Namespace).Create(t.Context(), p.object(), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s: %v", p.Name, err)
	}
	t.Cleanup(func() { deletePod(t, pod.Namespace, pod.Name) })
	return pod
}

// deletePod deletes a pod and waits until it is gone from the API.
func deletePod(t testing.TB, namespace, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pods := env.client.CoreV1().Pods(namespace)
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("deleting pod %s/%s: %v", namespace, name, err)
		return
	}
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("pod %s/%s still there a minute after deletion", namespace, name)
	}
}

// running waits until the pod runs and returns it.
func running(t *testing.T, namespace, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	framework.Eventually(t, 2*time.Minute, "pod "+namespace+"/"+name+" running", func() error {
		var err error
		pod, err = env.client.CoreV1().Pods(namespace).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" {
			return fmt.Errorf("phase %s, assignment %q", pod.Status.Phase, pod.Annotations[aadv1.AnnotationAssignment])
		}
		return nil
	})
	return pod
}

// Token requests the demo logs, one line each (demo/demo.go).
const (
	userToken    = "successfully acquired a service principal token using a user-assigned identity"
	userDenied   = "failed to acquire a service principal token using a user-assigned identity"
	defaultToken = "successfully acquired a service principal token"
	defaultError = "failed to acquire a service principal token"
	// demoStarted is the demo's first line, before any request.
	demoStarted = "starting aad-pod-identity demo pod"
)

// attempt is one logged token request of a demo pod, or its start.
type attempt struct {
	At   time.Time
	Msg  string
	Line string
}

// klogLine is klog's header and quoted message: I1127 05:01:02.123456 ... ] "msg".
var klogLine = regexp.MustCompile(`^[IEW](\d{4} \d{2}:\d{2}:\d{2}\.\d{6})\s+\d+ [^\]]+\] "([^"]*)"`)

// attempts returns the demo pod's logged token requests.
func attempts(t testing.TB, namespace, name string) []attempt {
	t.Helper()
	raw, err := env.client.CoreV1().Pods(namespace).GetLogs(name, &corev1.PodLogOptions{Container: "demo"}).DoRaw(t.Context())
	if err != nil {
		return nil // not started yet
	}
	return parseAttempts(raw, time.Now())
}

func parseAttempts(raw []byte, now time.Time) []attempt {
	var out []attempt
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		m := klogLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		switch m[2] {
		case userToken, userDenied, defaultToken, defaultError, demoStarted:
		default:
			continue
		}
		at, err := time.ParseInLocation("0102 15:04:05.000000", m[1], time.Local)
		if err != nil {
			continue
		}
		out = append(out, attempt{At: at.AddDate(now.Year(), 0, 0), Msg: m[2], Line: sc.Text()})
	}
	return out
}

// waitFor waits until the demo pod logs msg at or after since, and returns
// that attempt.
func waitFor(t *testing.T, namespace, name, msg string, since time.Time, timeout time.Duration) attempt {
	t.Helper()
	var found attempt
	framework.Eventually(t, timeout, fmt.Sprintf("pod %s/%s logging %q", namespace, name, msg), func() error {
		all := attempts(t, namespace, name)
		for _, a := range all {
			if a.Msg == msg && !a.At.Before(since) {
				found = a
				return nil
			}
		}
		if len(all) > 0 {
			return fmt.Errorf("last: %s", all[len(all)-1].Line)
		}
		return fmt.Errorf("no token request logged yet")
	})
	return found
}

// never fails if the demo pod ever logged msg.
func never(t *testing.T, namespace, name, msg string) {
	t.Helper()
	for _, a := range attempts(t, namespace, name) {
		if a.Msg == msg {
			t.Errorf("pod %s/%s: %s", namespace, name, a.Line)
		}
	}
}

// pauseImage is a pod program that only waits to be stopped; the chart's
// uninstall hook uses it too, so every node has it.
const pauseImage = "registry.k8s.io/pause:3.10"

// node returns the i-th simulated node and fails without it.
func node(t *testing.T, i int) *sandbox.Node {
	t.Helper()
	nodes := env.sb.Nodes()
	if len(nodes) <= i {
		t.Fatalf("the suite needs %d nodes, the sandbox has %d", i+1, len(nodes))
	}
	return nodes[i]
}

// nodeNetNS opens the node's network namespace, closed when the test ends.
func nodeNetNS(t testing.TB, n *sandbox.Node) ns.NetNS {
	t.Helper()
	netns, err := testns.Open(n.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Close() })
	return netns
}

// httpIn is an HTTP client whose connections start inside netns.
func httpIn(netns ns.NetNS) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return testns.Dial(ctx, netns, network, addr)
		}}}
}

// natRules returns the nat table's rules inside a node's network namespace.
func natRules(n *sandbox.Node) (string, error) { return tableRules(n, "nat") }

// tableRules returns one table's rules inside a node's network namespace.
func tableRules(n *sandbox.Node, table string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", n.NetNS, "iptables", "-w", "5", "-t", table, "-S").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("iptables -t %s -S in %s: %w: %s", table, n.NetNS, err, out)
	}
	return string(out), nil
}

// intercepted reports whether the node's nat table sends metadata traffic
// to NMI: the jump from PREROUTING and the DNAT rule in aad-metadata.
func intercepted(rules string) bool {
	return strings.Contains(rules, "-A PREROUTING -j aad-metadata") &&
		strings.Contains(rules, "-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT")
}

// watchInterception checks the node's nat rules every 50 ms until stop is
// called, which returns how many checks ran and the first one that found
// the interception missing (or could not read the rules).
func watchInterception(n *sandbox.Node) (stop func() (checks int, gap error)) {
	return watchRules(n, func(nat, _ string) error {
		if !intercepted(nat) {
			return fmt.Errorf("interception missing:\n%s", nat)
		}
		return nil
	})
}

// watchRules runs check on the node's nat and filter rules every 50 ms
// until stop is called (any number of times), which returns how many
// checks ran and the first failure (or failure to read the rules).
func watchRules(n *sandbox.Node, check func(nat, filter string) error) (stop func() (checks int, gap error)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var checks int
	var gap error
	wg.Go(func() {
		for {
			nat, err := natRules(n)
			var filter string
			if err == nil {
				filter, err = tableRules(n, "filter")
			}
			if err == nil {
				err = check(nat, filter)
			}
			checks++
			if err != nil && gap == nil {
				gap = err
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	var once sync.Once
	return func() (int, error) {
		once.Do(func() { close(done) })
		wg.Wait()
		return checks, gap
	}
}
