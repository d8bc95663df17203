//go:build e2e

package sandbox_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// startSandbox builds podinit, starts a sandbox with two kubelet stand-ins
// (what this package's tests check) in two pools
// and removes everything when the test ends, failed or not.
func startSandbox(t testing.TB) (*sandbox.Sandbox, kubernetes.Interface) {
	t.Helper()
	framework.RequireRoot(t)
	assets, err := framework.Assets()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./e2e/cmd/podinit")
	build.Dir = framework.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building podinit: %v\n%s", err, out)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sb, err := sandbox.Start(ctx, sandbox.Options{
		Assets: assets, Dir: t.TempDir(), Log: logr.Discard(), Kubelet: sandbox.KubeletStandin, PodInit: filepath.Join(bin, "podinit"),
		Images: sandbox.Images{"sandbox.test/sh": sh, "sandbox.test/python": py},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sb.Stop(); err != nil {
			t.Error(err)
		}
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
		pod := shPod("env", `echo "ip=$MY_POD_IP name=$MY_POD_NAME"; cat /etc/s/key; echo; test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token-ok; cat /etc/info/labels; sleep 600`)
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

	t.Run("an unknown image fails the pod with a clear reason", func(t *testing.T) {
		pod := shPod("unknown", "true")
		pod.Spec.Containers[0].Image = "example.com/nope:1"
		must(t, createObj(ctx, c, pod))
		p := waitPod(t, c, "unknown", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
		if !strings.Contains(p.Status.Message, `image "example.com/nope:1" is not one the sandbox can run`) {
			t.Fatalf("message %q", p.Status.Message)
		}
	})

	t.Run("restartPolicy OnFailure restarts a failing container, Never does not", func(t *testing.T) {
		for name, policy := range map[string]corev1.RestartPolicy{"onfailure": corev1.RestartPolicyOnFailure, "never": corev1.RestartPolicyNever} {
			pod := shPod(name, "exit 3")
			pod.Spec.RestartPolicy = policy
			must(t, createObj(ctx, c, pod))
		}
		waitPod(t, c, "onfailure", func(p *corev1.Pod) bool {
			return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 2
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
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: name, Image: "sandbox.test/sh",
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
		failing.Spec.InitContainers = []corev1.Container{{Name: "fail", Image: "sandbox.test/sh", Command: []string{"sh", "-c", "exit 4"}}}
		must(t, createObj(ctx, c, failing))
		p = waitPod(t, c, "init-fails", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
		if cs := p.Status.ContainerStatuses[0]; cs.State.Running != nil || cs.RestartCount != 0 {
			t.Fatalf("the container ran after a failed init container: %+v", cs)
		}
	})

	t.Run("readiness probe gates Ready and pods on different nodes reach each other", func(t *testing.T) {
		srv := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
			Spec: corev1.PodSpec{NodeName: sb.Nodes()[0].Name, Containers: []corev1.Container{{
				Name: "web", Image: "sandbox.test/python", Args: []string{"-m", "http.server", "8080"},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1},
			}}},
		}
		must(t, createObj(ctx, c, srv))
		web := waitPod(t, c, "web", podReady)
		client := shPod("client", fmt.Sprintf(`python3 -c 'import urllib.request; print("status", urllib.request.urlopen("http://%s:8080/").status)'; sleep 600`, web.Status.PodIP))
		client.Spec.NodeName = sb.Nodes()[1].Name
		client.Spec.Containers[0].Image = "sandbox.test/sh"
		must(t, createObj(ctx, c, client))
		waitLogs(t, sb, "client", []string{"status 200"})
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
		pod := shPod("imds", `python3 -c 'import urllib.request as u; print(u.urlopen(u.Request("http://169.254.169.254/metadata/instance?api-version=2021-02-01", headers={"Metadata": "true"})).read().decode())'; sleep 600`)
		node := sb.Nodes()[1]
		pod.Spec.NodeName = node.Name
		must(t, createObj(ctx, c, pod))
		waitLogs(t, sb, "imds", []string{`"vmScaleSetName":"` + node.Pool.Name + `"`})
	})

	t.Run("deleting a pod removes its namespace and processes", func(t *testing.T) {
		p, err := c.CoreV1().Pods("default").Get(ctx, "env", metav1.GetOptions{})
		must(t, err)
		must(t, c.CoreV1().Pods("default").Delete(ctx, "env", metav1.DeleteOptions{}))
		err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := c.CoreV1().Pods("default").Get(ctx, "env", metav1.GetOptions{})
			return err != nil, nil
		})
		must(t, err)
		left, err := sandbox.ListNetNS(sandbox.NetNSPrefix(sb.ID) + "p" + strings.ReplaceAll(string(p.UID), "-", "")[:10])
		if err != nil || len(left) != 0 {
			t.Fatalf("pod namespace left: %v %v", left, err)
		}
	})

	if after := rootNetworkState(t); after != rootBefore {
		t.Errorf("root network namespace changed:\nbefore:\n%s\nafter:\n%s", rootBefore, after)
	}
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
			Name: "main", Image: "sandbox.test/sh", Command: []string{"sh", "-c", script},
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
