//go:build e2e

package sandbox_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// startSandbox builds the node images, starts a sandbox with two real
// nodes (kubelet, containerd, runc, CNI bridge, kube-proxy) in two pools
// and removes everything when the test ends, failed or not.
func startSandbox(t testing.TB) (*sandbox.Sandbox, kubernetes.Interface) {
	t.Helper()
	framework.RequireRoot(t)
	assets, err := framework.Assets()
	if err != nil {
		t.Fatal(err)
	}
	nodeAssets, err := sandbox.NodeAssets()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	images, err := sandbox.BuildNodeImages(ctx, framework.RepoRoot(), t.TempDir(), nodeAssets)
	if err != nil {
		t.Fatal(err)
	}
	// The sandbox's own short state directory (a test's TempDir can be too
	// deep for the kubelet's sockets).
	sb, err := sandbox.Start(ctx, sandbox.Options{Assets: assets, Log: logr.Discard(), NodeAssets: nodeAssets, NodeImages: images})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sb.Stop(); err != nil {
			t.Error(err)
		}
		_ = os.RemoveAll(sb.Dir)
		left, err := sandbox.ListNetNS(sandbox.NetNSPrefix(sb.ID))
		if err != nil || len(left) > 0 {
			t.Errorf("namespaces left behind: %v %v", left, err)
		}
	})
	if err := sb.AddNodes(ctx, sandbox.NodeOptions{Count: 2, Pools: 2}); err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(sb.Config)
	if err != nil {
		t.Fatal(err)
	}
	return sb, c
}

func TestSandbox(t *testing.T) {
	rootBefore := rootNetworkState(t)
	sb, c := startSandbox(t)
	ctx := t.Context()

	t.Run("nodes are registered Ready with Azure provider IDs in two pools", func(t *testing.T) {
		nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pools := map[string]bool{}
		for _, n := range nodes.Items {
			if !strings.HasPrefix(n.Spec.ProviderID, "azure:///subscriptions/"+sandbox.SubscriptionID) || !strings.Contains(n.Spec.ProviderID, "/virtualMachineScaleSets/") {
				t.Errorf("node %s providerID %q", n.Name, n.Spec.ProviderID)
			}
			pools[n.Labels["agentpool"]] = true
		}
		if len(nodes.Items) != 2 || len(pools) != 2 {
			t.Fatalf("want 2 nodes in 2 pools, got %d in %v", len(nodes.Items), pools)
		}
	})

	must(t, createObj(ctx, c, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "default"}, StringData: map[string]string{"key": "secret-value"}}))
	must(t, createObj(ctx, c, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "default"}}))

	t.Run("a pod runs with env, volumes, a service-account token and its own IP, and kubectl logs works", func(t *testing.T) {
		pod := shPod("env", `echo "ip=$MY_POD_IP name=$MY_POD_NAME"; cat /etc/s/key; echo; test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token-ok; cat /etc/info/labels; echo; sleep 600`)
		pod.Spec.ServiceAccountName = "app"
		pod.Spec.Containers[0].Env = []corev1.EnvVar{
			{Name: "MY_POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "MY_POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		}
		pod.Spec.Volumes = []corev1.Volume{
			{Name: "s", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s"}}},
			{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}}}}},
		}
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "s", MountPath: "/etc/s", ReadOnly: true}, {Name: "info", MountPath: "/etc/info"}}
		must(t, createObj(ctx, c, pod))
		running := waitPod(t, c, "env", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		if !strings.HasPrefix(running.Status.PodIP, "10.244.") {
			t.Fatalf("pod IP %q", running.Status.PodIP)
		}
		want := []string{"ip=" + running.Status.PodIP + " name=env", "secret-value", "token-ok", `app="env"`}
		waitLogs(t, sb, "env", want)
	})

	t.Run("an image the node does not have fails to pull with a clear reason", func(t *testing.T) {
		pod := shPod("unknown", "true")
		// A registry on the control plane's address, where nothing listens:
		// refused at once (a name outside the cluster takes containerd's
		// resolver about a minute to give up on).
		const image = "10.200.0.1:5000/nope:1"
		pod.Spec.Containers[0].Image = image
		must(t, createObj(ctx, c, pod))
		p := waitPod(t, c, "unknown", func(p *corev1.Pod) bool {
			return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Waiting != nil &&
				slices.Contains([]string{"ErrImagePull", "ImagePullBackOff"}, p.Status.ContainerStatuses[0].State.Waiting.Reason)
		})
		if w := p.Status.ContainerStatuses[0].State.Waiting; p.Status.Phase != corev1.PodPending || !strings.Contains(w.Message, image) {
			t.Fatalf("phase %s, waiting %+v", p.Status.Phase, w)
		}
	})

	t.Run("restartPolicy OnFailure restarts a failing container, Never does not", func(t *testing.T) {
		for name, policy := range map[string]corev1.RestartPolicy{"onfailure": corev1.RestartPolicyOnFailure, "never": corev1.RestartPolicyNever} {
			pod := shPod(name, "exit 3")
			pod.Spec.RestartPolicy = policy
			must(t, createObj(ctx, c, pod))
		}
		waitPod(t, c, "onfailure", func(p *corev1.Pod) bool {
			return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1
		})
		p := waitPod(t, c, "never", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
		if cs := p.Status.ContainerStatuses[0]; cs.RestartCount != 0 || cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 3 {
			t.Fatalf("status %+v", cs)
		}
	})

	t.Run("init containers run in order before the containers; a failing one fails a Never pod", func(t *testing.T) {
		pod := shPod("init", `cat /work/order; sleep 600`)
		pod.Spec.Volumes = []corev1.Volume{{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		mount := []corev1.VolumeMount{{Name: "work", MountPath: "/work"}}
		pod.Spec.Containers[0].VolumeMounts = mount
		for _, name := range []string{"first", "second"} {
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: name, Image: sandbox.BusyboxImage,
				Command: []string{"sh", "-c", "echo " + name + " >> /work/order"}, VolumeMounts: mount})
		}
		must(t, createObj(ctx, c, pod))
		p := waitPod(t, c, "init", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		for _, st := range p.Status.InitContainerStatuses {
			if st.State.Terminated == nil || st.State.Terminated.ExitCode != 0 {
				t.Errorf("init container %s: %+v", st.Name, st.State)
			}
		}
		waitLogs(t, sb, "init", []string{"first\nsecond\n"})

		failing := shPod("init-fails", "echo never runs; sleep 600")
		failing.Spec.RestartPolicy = corev1.RestartPolicyNever
		failing.Spec.InitContainers = []corev1.Container{{Name: "fail", Image: sandbox.BusyboxImage, Command: []string{"sh", "-c", "exit 4"}}}
		must(t, createObj(ctx, c, failing))
		p = waitPod(t, c, "init-fails", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
		if cs := p.Status.ContainerStatuses[0]; cs.State.Running != nil || cs.RestartCount != 0 {
			t.Fatalf("the container ran after a failed init container: %+v", cs)
		}
	})

	t.Run("readiness probe gates Ready and pods on different nodes reach each other", func(t *testing.T) {
		srv := shPod("web", "mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www")
		srv.Spec.NodeName = sb.Nodes()[0].Name
		srv.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
		must(t, createObj(ctx, c, srv))
		web := waitPod(t, c, "web", podReady)
		client := shPod("client", fmt.Sprintf(`echo "got $(wget -q -O - http://%s:8080/)"; sleep 600`, web.Status.PodIP))
		client.Spec.NodeName = sb.Nodes()[1].Name
		must(t, createObj(ctx, c, client))
		waitLogs(t, sb, "client", []string{"got hello-from-web"})
	})

	t.Run("a hostNetwork pod runs in its node's namespace with the node IP", func(t *testing.T) {
		pod := shPod("hostnet", "ip -o addr show dev lo; sleep 600")
		pod.Spec.HostNetwork = true
		must(t, createObj(ctx, c, pod))
		p := waitPod(t, c, "hostnet", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		if p.Status.PodIP != p.Status.HostIP || !strings.HasPrefix(p.Status.PodIP, "10.200.") {
			t.Fatalf("pod IP %q, host IP %q", p.Status.PodIP, p.Status.HostIP)
		}
		waitLogs(t, sb, "hostnet", []string{"169.254.169.254/32"})
	})

	t.Run("a pod reaches its node's IMDS at 169.254.169.254, serving that node's VM", func(t *testing.T) {
		pod := shPod("imds", `wget -q -O - --header "Metadata: true" "http://169.254.169.254/metadata/instance?api-version=2021-02-01"; sleep 600`)
		node := sb.Nodes()[1]
		pod.Spec.NodeName = node.Name
		must(t, createObj(ctx, c, pod))
		waitLogs(t, sb, "imds", []string{`"vmScaleSetName":"` + node.Pool.Name + `"`})
	})

	t.Run("deleting a pod removes its namespace and processes", func(t *testing.T) {
		doomed := shPod("doomed", "exec sleep 3599")
		// sleep, as PID 1, ignores SIGTERM: no need to wait out a grace period.
		doomed.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
		must(t, createObj(ctx, c, doomed))
		waitPod(t, c, "doomed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		pid := processOf(t, "sleep\x003599")
		netns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		must(t, err)
		// The runtime keeps the pod's namespace mounted (nsfs) while it lives.
		if !mounted(t, netns) {
			t.Fatalf("the pod's network namespace %s is not mounted: the check below would prove nothing", netns)
		}
		must(t, c.CoreV1().Pods("default").Delete(ctx, "doomed", metav1.DeleteOptions{}))
		framework.Eventually(t, time.Minute, "the pod, its process and its namespace gone", func() error {
			if _, err := c.CoreV1().Pods("default").Get(ctx, "doomed", metav1.GetOptions{}); err == nil {
				return errors.New("the pod is still there")
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				return fmt.Errorf("process %d still runs", pid)
			}
			if mounted(t, netns) {
				return fmt.Errorf("%s is still mounted", netns)
			}
			return nil
		})
	})

	t.Run("a pod's bound service-account token signs its identity in at the fake Azure AD through a federated credential", func(t *testing.T) {
		testFederatedExchange(t, sb, c)
	})

	if after := rootNetworkState(t); after != rootBefore {
		t.Errorf("root network namespace changed:\nbefore:\n%s\nafter:\n%s", rootBefore, after)
	}
}

// testFederatedExchange exchanges a pod-bound token of the ServiceAccount
// "app" for Azure AD tokens of identities with federated credentials, over
// HTTPS inside the control-plane namespace: the fake Azure AD fetches the
// apiserver's discovery document and keys anonymously.
func testFederatedExchange(t *testing.T, sb *sandbox.Sandbox, c kubernetes.Interface) {
	ctx := t.Context()
	az, err := sb.ServeAzure()
	must(t, err)
	pod := shPod("federated", "sleep 600")
	pod.Spec.ServiceAccountName = "app"
	must(t, createObj(ctx, c, pod))
	created, err := c.CoreV1().Pods("default").Get(ctx, "federated", metav1.GetOptions{})
	must(t, err)
	tr, err := c.CoreV1().ServiceAccounts("default").CreateToken(ctx, "app", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{fakeazure.FederatedAudience},
		ExpirationSeconds: ptr.To[int64](600),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: created.Name, UID: created.UID},
	}}, metav1.CreateOptions{})
	must(t, err)

	workload := sb.Azure.CreateIdentity(sandbox.SubscriptionID, "rg", "workload")
	other := sb.Azure.CreateIdentity(sandbox.SubscriptionID, "rg", "other")
	for id, subject := range map[fakeazure.Identity]string{workload: "system:serviceaccount:default:app", other: "system:serviceaccount:default:other"} {
		_, err := sb.Azure.CreateFederatedCredential(id.ResourceID, "sandbox", sb.IssuerURL, subject)
		must(t, err)
	}
	caPEM, err := os.ReadFile(az.CAFile)
	must(t, err)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: sb.DialControlPlane, TLSClientConfig: &tls.Config{RootCAs: roots}}}

	tests := []struct {
		name     string
		id       fakeazure.Identity
		status   int
		contains string
	}{
		{"the identity whose credential names the ServiceAccount", workload, http.StatusOK, ""},
		{"an identity whose credential names another subject", other, http.StatusBadRequest,
			"AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '" + sb.IssuerURL +
				"'. Assertion Subject: 'system:serviceaccount:default:app'."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.PostForm(az.AADAuthorityHost+tt.id.TenantID+"/oauth2/v2.0/token", url.Values{
				"grant_type": {"client_credentials"}, "client_id": {tt.id.ClientID}, "scope": {"https://vault.azure.net/.default"},
				"client_assertion_type": {fakeazure.JWTBearer}, "client_assertion": {tr.Status.Token}})
			must(t, err)
			defer resp.Body.Close()
			var body struct {
				AccessToken      string `json:"access_token"`
				ErrorDescription string `json:"error_description"`
			}
			must(t, json.NewDecoder(resp.Body).Decode(&body))
			if resp.StatusCode != tt.status || !strings.Contains(body.ErrorDescription, tt.contains) {
				t.Fatalf("got %d %+v, want %d %q", resp.StatusCode, body, tt.status, tt.contains)
			}
			if tt.status != http.StatusOK {
				return
			}
			claims, err := sb.Signer.Parse(body.AccessToken)
			must(t, err)
			if claims.AppID != tt.id.ClientID || claims.XMSMirID != tt.id.ResourceID || len(claims.Audience) != 1 || claims.Audience[0] != "https://vault.azure.net" {
				t.Fatalf("claims %+v, want those of %+v for https://vault.azure.net", claims, tt.id)
			}
		})
	}
}

// processOf is the one process whose command line is cmdline (NUL
// separated).
func processOf(t *testing.T, cmdline string) int {
	t.Helper()
	files, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.TrimSuffix(string(b), "\x00") == cmdline {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("processes running %q: %v, want one", cmdline, pids)
	}
	return pids[0]
}

// mounted tells whether a network namespace (net:[inode]) is mounted
// anywhere on the machine.
func mounted(t *testing.T, netns string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		// The fourth field is the mount's root: the namespace, for nsfs.
		if f := strings.Fields(l); len(f) > 3 && f[3] == netns {
			return true
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func shPod(name, script string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "main", Image: sandbox.BusyboxImage, Command: []string{"sh", "-c", script},
		}}},
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func createObj(ctx context.Context, c kubernetes.Interface, obj any) error {
	var err error
	switch o := obj.(type) {
	case *corev1.Pod:
		_, err = c.CoreV1().Pods(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Secret:
		_, err = c.CoreV1().Secrets(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.ServiceAccount:
		_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	default:
		err = fmt.Errorf("unsupported %T", obj)
	}
	return err
}

func waitPod(t *testing.T, c kubernetes.Interface, name string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := c.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return cond(p), nil
	})
	if err != nil {
		t.Fatalf("pod %s: %v; last status %+v", name, err, last)
	}
	return last
}

// waitLogs reads the pod's log through kubectl, i.e. the apiserver and the
// node's kubelet endpoint, until it contains every wanted string.
func waitLogs(t *testing.T, sb *sandbox.Sandbox, pod string, want []string) {
	t.Helper()
	assets, _ := framework.Assets()
	var out []byte
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		out, err = exec.CommandContext(ctx, filepath.Join(assets, "kubectl"), "--kubeconfig", sb.Kubeconfig, "logs", pod).CombinedOutput()
		if err != nil {
			return false, nil
		}
		for _, w := range want {
			if !bytes.Contains(out, []byte(w)) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("kubectl logs %s: want %q, got:\n%s", pod, want, out)
	}
}

// rootNetworkState is what the sandbox must never change in the machine's
// own namespace: addresses, routes and iptables rules.
func rootNetworkState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"ip", "-o", "addr"}, {"ip", "route", "show", "table", "all"}, {"iptables-save"}} {
		out, err := exec.Command(args[0], args[1:]...).Output()
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(l, "#") { // iptables-save's timestamps
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}
