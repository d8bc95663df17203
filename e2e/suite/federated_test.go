//go:build e2e

package suite

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/demo"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// TestFederatedMode proves workload identity federation (issue 27) on the
// real nodes, one release for all cases: first standard mode with
// policy.federation.enabled, where AzureIdentities annotated federated are
// served through federation next to standard ones and an identity is
// migrated while its pod runs, then policy.mode=federated. The release
// serves NMI's metrics over plain HTTP so that the suite can read them from
// the node, and is uninstalled at the end.
func TestFederatedMode(t *testing.T) {
	releaseOfItsOwn(t)
	if err := helmRelease("upgrade", federationValues()...); err != nil {
		t.Fatal(err)
	}
	for _, c := range []suiteCase{
		{"a federated identity is served next to a standard one, never gated nor on a pool", testFederatedNextToStandard},
		{"another service account gets a 403 naming the missing credential, another namespace nothing", testFederatedRefusals},
		{"an identity turned federated while its pod runs keeps serving it and leaves the pool", testFederatedMigration},
		{"mode federated: no assigner, a plain identity is federated", testModeFederated},
		{"NMI forgets a deleted federated pod", testFederatedPodForgotten},
	} {
		t.Run(c.name, c.run)
	}
}

// federationValues turn federation on with the sandbox's tenant, and NMI's
// metrics to plain HTTP (read by nmiMetric).
func federationValues(extra ...string) []string {
	return append([]string{"--set", "policy.federation.enabled=true",
		"--set-string", "policy.federation.tenantID=" + env.sb.Azure.TenantID,
		"--set", "nmi.secureMetrics=false"}, extra...)
}

func testFederatedNextToStandard(t *testing.T) {
	n := node(t, 0)
	std := userIdentity(t, "e2e-fed-std", "e2e-fed-std")
	fed := federatedIdentity(t, "e2e-fed", "e2e-fed")
	federate(t, fed, "default", serviceAccount(t, "default", "e2e-fed"))
	demoPod{Name: "fed-std", Labels: map[string]string{aadv1.BindingLabel: "e2e-fed-std"}, ClientID: std.ClientID, Node: n.Name}.create(t)
	created := demoPod{Name: "fed", Labels: map[string]string{aadv1.BindingLabel: "e2e-fed"}, ClientID: fed.ClientID, Node: n.Name,
		Modify: withServiceAccount("e2e-fed")}.create(t)
	if identity.HasGate(created) {
		t.Errorf("the federated identity's pod was gated: %v", created.Spec.SchedulingGates)
	}
	for _, name := range []string{"fed-std", "fed"} {
		running(t, "default", name)
		waitFor(t, "default", name, userToken, time.Time{}, time.Minute)
	}
	claims := podToken(t, running(t, "default", "fed"), fed.ClientID)
	if claims.AppID != fed.ClientID {
		t.Errorf("the federated pod got a token of appid %s, want %s", claims.AppID, fed.ClientID)
	}
	if !env.sb.Azure.Assigned(n.Pool.ID, std.ClientID) {
		t.Errorf("the standard identity is not on %s", n.Pool.Name)
	}
	onNoPool(t, fed)
	never(t, "default", "fed", userDenied)
}

func testFederatedRefusals(t *testing.T) {
	id := federatedIdentity(t, "e2e-fed-refused", "e2e-fed-refused")
	// Credentials exist for the cluster's issuer, but for other subjects
	// than the refused pods': Azure AD's AADSTS70021.
	federate(t, id, "default", serviceAccount(t, "default", "e2e-fed-trusted"))
	serviceAccount(t, "default", "e2e-fed-untrusted")
	kubectl(t, "create", "namespace", "e2e-fed-other")
	t.Cleanup(func() { _, _ = kubectlIn("delete", "namespace", "e2e-fed-other", "--wait", "--timeout=2m") })
	// The other namespace's service account has a credential: only the
	// namespaced binding keeps its pod from the identity.
	federate(t, id, "e2e-fed-other", "default")
	framework.Eventually(t, time.Minute, "service account e2e-fed-other/default", func() error {
		_, err := kubectlIn("-n", "e2e-fed-other", "get", "serviceaccount", "default")
		return err
	})
	labels := map[string]string{aadv1.BindingLabel: "e2e-fed-refused"}
	n := node(t, 0)
	demoPod{Name: "fed-untrusted", Labels: labels, ClientID: id.ClientID, Node: n.Name, Modify: withServiceAccount("e2e-fed-untrusted")}.create(t)
	demoPod{Name: "fed-elsewhere", Namespace: "e2e-fed-other", Labels: labels, ClientID: id.ClientID}.create(t)

	running(t, "default", "fed-untrusted")
	refused := waitFor(t, "default", "fed-untrusted", userDenied, time.Time{}, time.Minute)
	for _, want := range []string{"403", "has no federated credential", "issuer " + env.sb.IssuerURL,
		"subject system:serviceaccount:default:e2e-fed-untrusted", "az identity federated-credential create"} {
		if !strings.Contains(refused.Line, want) {
			t.Errorf("the refusal does not say %q: %s", want, refused.Line)
		}
	}
	never(t, "default", "fed-untrusted", userToken)
	// The reason is in NMI's request log and metrics, not in the answer.
	if got := nmiMetric(t, n, `nmi_requests_total{code="403",reason="no_federated_credential"}`); got == 0 {
		t.Errorf("NMI on %s counted no 403 of reason no_federated_credential", n.Name)
	}

	pod := running(t, "e2e-fed-other", "fed-elsewhere")
	if got := pod.Annotations[aadv1.AnnotationIdentities]; got != "" {
		t.Errorf("pod admitted for %q across namespaces", got)
	}
	denied(t, pod)
}

// testFederatedMigration: the documented order, the credential first and
// then the annotation, keeps a pod asking every second served throughout.
func testFederatedMigration(t *testing.T) {
	n := node(t, 0)
	id := userIdentity(t, "e2e-fed-migrated", "e2e-fed-migrated")
	sa := serviceAccount(t, "default", "e2e-fed-migrated")
	demoPod{Name: "fed-migrated", Labels: map[string]string{aadv1.BindingLabel: "e2e-fed-migrated"}, ClientID: id.ClientID, Node: n.Name,
		Modify: withServiceAccount(sa)}.create(t)
	running(t, "default", "fed-migrated")
	waitFor(t, "default", "fed-migrated", userToken, time.Time{}, time.Minute)
	if !env.sb.Azure.Assigned(n.Pool.ID, id.ClientID) {
		t.Fatalf("the standard identity is not on %s", n.Pool.Name)
	}

	federate(t, id, "default", sa)
	requests := nmiMetric(t, n, tokenRequests)
	annotated := time.Now()
	kubectl(t, "-n", "default", "annotate", "azureidentity", "e2e-fed-migrated", aadv1.AnnotationFederated+"=true")
	// The pod's tokens cached from IMDS are not served any more: NMI asks
	// for the pod's service-account token to exchange.
	framework.Eventually(t, 30*time.Second, "NMI on "+n.Name+" requesting a service-account token", func() error {
		if got := nmiMetric(t, n, tokenRequests); got <= requests {
			return fmt.Errorf("%s %v, was %v before the annotation", tokenRequests, got, requests)
		}
		return nil
	})
	framework.Eventually(t, gcGracePeriod+time.Minute, "the federated identity off "+n.Pool.Name, func() error {
		if env.sb.Azure.Assigned(n.Pool.ID, id.ClientID) {
			return fmt.Errorf("still on %s", n.Pool.Name)
		}
		return nil
	})
	left := time.Now()
	t.Logf("identity left %s %s after it was annotated (grace period %s)", n.Pool.Name, left.Sub(annotated).Round(time.Second), gcGracePeriod)
	// Off the pool, IMDS would refuse it: only federation serves it now.
	waitFor(t, "default", "fed-migrated", userToken, left, 30*time.Second)
	never(t, "default", "fed-migrated", userDenied)
	var served int
	for _, a := range attempts(t, "default", "fed-migrated") {
		if a.Msg == userToken && a.At.After(annotated) {
			served++
		}
	}
	t.Logf("%d tokens served since the annotation, none refused", served)
}

func testModeFederated(t *testing.T) {
	if err := helmRelease("upgrade", federationValues("--set", "policy.mode=federated")...); err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, time.Minute, "no assigner pod in mode federated", func() error {
		if pods := componentPods(t, "assigner", ""); len(pods) > 0 {
			return fmt.Errorf("still running: %v", pods)
		}
		return nil
	})
	id := userIdentity(t, "e2e-fed-mode", "e2e-fed-mode")
	federate(t, id, "default", serviceAccount(t, "default", "e2e-fed-mode"))
	created := demoPod{Name: "fed-mode", Labels: map[string]string{aadv1.BindingLabel: "e2e-fed-mode"}, ClientID: id.ClientID, Node: node(t, 0).Name,
		Modify: withServiceAccount("e2e-fed-mode")}.create(t)
	if identity.HasGate(created) {
		t.Errorf("mode federated gated the pod: %v", created.Spec.SchedulingGates)
	}
	running(t, "default", "fed-mode")
	waitFor(t, "default", "fed-mode", userToken, time.Time{}, time.Minute)
	onNoPool(t, id)
	never(t, "default", "fed-mode", userDenied)
}

// testFederatedPodForgotten: NMI drops what it kept for a federated pod
// (its service-account token, its Azure AD tokens) once the pod is
// deleted. The annotation makes it federated whichever mode the release is
// in.
func testFederatedPodForgotten(t *testing.T) {
	n := node(t, 0)
	id := federatedIdentity(t, "e2e-fed-forgotten", "e2e-fed-forgotten")
	federate(t, id, "default", serviceAccount(t, "default", "e2e-fed-forgotten"))
	demoPod{Name: "fed-forgotten", Labels: map[string]string{aadv1.BindingLabel: "e2e-fed-forgotten"}, ClientID: id.ClientID, Node: n.Name,
		Modify: withServiceAccount("e2e-fed-forgotten")}.create(t)
	running(t, "default", "fed-forgotten")
	waitFor(t, "default", "fed-forgotten", userToken, time.Time{}, time.Minute)
	const forgotten = "nmi_federated_pods_forgotten_total"
	before := nmiMetric(t, n, forgotten)
	deletePod(t, "default", "fed-forgotten")
	framework.Eventually(t, time.Minute, "NMI on "+n.Name+" forgetting the deleted pod", func() error {
		if got := nmiMetric(t, n, forgotten); got <= before {
			return fmt.Errorf("%s %v, was %v before the deletion", forgotten, got, before)
		}
		return nil
	})
}

// federatedIdentity is userIdentity annotated federated from its creation,
// so that the webhook never sees it standard.
func federatedIdentity(t *testing.T, name, selector string) fakeazure.Identity {
	t.Helper()
	return annotatedIdentity(t, name, selector, map[string]string{aadv1.AnnotationFederated: "true"})
}

// federate gives id a federated credential for the cluster's issuer and a
// service account, as `az identity federated-credential create` does.
func federate(t testing.TB, id fakeazure.Identity, namespace, sa string) {
	t.Helper()
	name := "e2e-" + namespace + "-" + sa
	if _, err := env.sb.Azure.CreateFederatedCredential(id.ResourceID, name, env.sb.IssuerURL, "system:serviceaccount:"+namespace+":"+sa); err != nil {
		t.Fatalf("federated credential %s on %s: %v", name, id.ResourceID, err)
	}
}

// serviceAccount creates a service account, deleted when the test ends,
// and returns its name.
func serviceAccount(t *testing.T, namespace, name string) string {
	t.Helper()
	kubectl(t, "-n", namespace, "create", "serviceaccount", name)
	t.Cleanup(func() { _, _ = kubectlIn("-n", namespace, "delete", "serviceaccount", name, "--ignore-not-found") })
	return name
}

func withServiceAccount(name string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Spec.ServiceAccountName = name }
}

// onNoPool fails if the identity is on any node pool.
func onNoPool(t *testing.T, id fakeazure.Identity) {
	t.Helper()
	for _, n := range env.sb.Nodes() {
		if env.sb.Azure.Assigned(n.Pool.ID, id.ClientID) {
			t.Errorf("identity %s is on %s", id.ClientID, n.Pool.Name)
		}
	}
}

// podToken asks NMI for clientID's token from inside the pod's network
// namespace, as the pod's own programs do, and returns the token's claims.
func podToken(t *testing.T, pod *corev1.Pod, clientID string) *fakeazure.Claims {
	t.Helper()
	client := httpIn(podNetNS(t, pod))
	q := url.Values{"api-version": {"2018-02-01"}, "resource": {demo.ManagementResource}, "client_id": {clientID}}
	body := get(t, client, "http://"+sandbox.MetadataIP.String()+demo.TokenPath+"?"+q.Encode(), "Metadata", "true")
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil {
		t.Fatalf("token response %s: %v", body, err)
	}
	claims, err := env.sb.Signer.Parse(tok.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	return claims
}

// podNetNS opens the pod's network namespace through its sandbox's process,
// which containerd names; it is closed when the test ends.
func podNetNS(t *testing.T, pod *corev1.Pod) ns.NetNS {
	t.Helper()
	st := readySandbox(t, nodeOf(t, pod).CRISocket, pod, true)
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info.Pid == 0 {
		t.Fatalf("no process in the runtime's information on pod %s/%s (%v): %v", pod.Namespace, pod.Name, err, st.GetInfo())
	}
	netns, err := ns.GetNS(fmt.Sprintf("/proc/%d/ns/net", info.Pid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Close() })
	return netns
}

// tokenRequests counts the service-account tokens NMI requested, which it
// does for federated identities only.
const tokenRequests = `nmi_upstream_duration_seconds_count{upstream="tokenrequest"}`

// nmiMetric reads a series (name and labels as exposed) from the NMI of node
// n, which serves its metrics on the node's address
// (nmi.secureMetrics=false); a series not yet exposed is 0.
func nmiMetric(t *testing.T, n *sandbox.Node, series string) float64 {
	t.Helper()
	client := httpIn(nodeNetNS(t, n))
	port := kubectl(t, "-n", releaseNS, "get", "daemonset", release+"-nmi", "-o", `jsonpath={.spec.template.spec.containers[0].ports[?(@.name=="metrics")].containerPort}`)
	body := get(t, client, "http://"+net.JoinHostPort(n.IP, strings.TrimSpace(port))+"/metrics")
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", sc.Text(), err)
			}
			return f
		}
	}
	return 0
}

// get returns the body of a 200 answer to GET u, with header pairs.
func get(t *testing.T, client *http.Client, u string, header ...string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v: %s", u, resp.Status, err, body)
	}
	return body
}
