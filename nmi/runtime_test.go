package nmi

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// fakeRuntime is a container runtime's pod sandboxes, served over CRI on a
// unix socket as containerd serves them.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	mu        sync.Mutex
	sandboxes map[string]*runtimeapi.PodSandboxStatus // by ID
}

func (f *fakeRuntime) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &runtimeapi.ListPodSandboxResponse{}
	for id, st := range f.sandboxes {
		fl := req.GetFilter()
		if fl.GetState() != nil && fl.GetState().GetState() != st.GetState() {
			continue
		}
		match := true
		for k, v := range fl.GetLabelSelector() {
			match = match && st.GetLabels()[k] == v
		}
		if match {
			resp.Items = append(resp.Items, &runtimeapi.PodSandbox{Id: id, State: st.GetState(), Labels: st.GetLabels()})
		}
	}
	return resp, nil
}

func (f *fakeRuntime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &runtimeapi.PodSandboxStatusResponse{Status: f.sandboxes[req.GetPodSandboxId()]}, nil
}

func (f *fakeRuntime) set(id, podUID, ip string, state runtimeapi.PodSandboxState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sandboxes[id] = &runtimeapi.PodSandboxStatus{Id: id, State: state, Labels: map[string]string{podUIDLabel: podUID},
		Network: &runtimeapi.PodSandboxNetworkStatus{Ip: ip}}
}

// serveRuntime serves f on a socket in a temporary directory.
func serveRuntime(t *testing.T, f *fakeRuntime) (socket string, stop func()) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "cri.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return socket, srv.Stop
}

// IP reuse: pod a ended and pod c took its IP, but NMI's cache still shows
// a Running at the IP and c without one. From the cache alone the caller
// is served as a; the runtime, which already gives the IP to c's sandbox,
// makes NMI refuse until the cache catches up.
func TestCallerConfirmedWithRuntime(t *testing.T) {
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=r"
	id := azureIdentity("id-a", "client-a", "")
	old := pod("a", "10.0.0.1", admitted("ns/id-a"))
	objs := []client.Object{&id, binding("ns", "bind-a", "sel", "id-a"), old}

	t.Run("cache alone: served as the pod that left", func(t *testing.T) {
		f := newFixture(t, objs...)
		if rec := f.do(t, "10.0.0.1", tok, true); rec.Code != http.StatusOK {
			t.Fatalf("got %d %s; this case shows the window the runtime closes", rec.Code, rec.Body)
		}
	})

	rt := &fakeRuntime{sandboxes: map[string]*runtimeapi.PodSandboxStatus{}}
	socket, stop := serveRuntime(t, rt)
	sb, conn, err := dialRuntime(socket, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	f := newFixture(t, objs...)
	f.server.runtime = sb
	f.server.callerWait = 300 * time.Millisecond
	try := func(step string, status int, want string) {
		t.Helper()
		rec := f.do(t, "10.0.0.1", tok, true)
		if rec.Code != status || !strings.Contains(rec.Body.String(), want) {
			t.Fatalf("%s: got %d %s; want %d containing %q", step, rec.Code, rec.Body, status, want)
		}
	}

	rt.set("sb-a", string(old.UID), "10.0.0.1", runtimeapi.PodSandboxState_SANDBOX_READY)
	try("runtime agrees", http.StatusOK, "tok-client-a")

	rt.set("sb-a", string(old.UID), "10.0.0.1", runtimeapi.PodSandboxState_SANDBOX_NOTREADY)
	rt.set("sb-c", "uid-c", "10.0.0.1", runtimeapi.PodSandboxState_SANDBOX_READY)
	try("IP now held by another pod's sandbox", http.StatusForbidden, "does not report IP 10.0.0.1")

	// The cache catches up: a is gone, c (unlabelled) holds the IP.
	if err := f.client.Delete(t.Context(), old); err != nil {
		t.Fatal(err)
	}
	c := pod("c", "10.0.0.1")
	c.UID = "uid-c"
	if err := f.client.Create(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	try("cache caught up: c is refused as itself", http.StatusForbidden, "no admitted AzureIdentity")

	stop()
	try("runtime down: fail closed", http.StatusServiceUnavailable, "cannot confirm the caller")
}

// With the runtime's socket, the runtime decides who holds an IP: a newer
// pod without a reported IP (whose sandbox may exist) no longer holds back
// a caller the runtime confirms; without it, the guess still does.
func TestRuntimeOverridesIPReuseGuess(t *testing.T) {
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=r"
	id := azureIdentity("id-a", "client-a", "")
	owner := pod("owner", "10.0.0.20", admitted("ns/id-a"), created(10*time.Minute))
	newer := pod("newer", "", created(2*time.Second), sandbox(corev1.ConditionFalse, time.Second))
	rt := &fakeRuntime{sandboxes: map[string]*runtimeapi.PodSandboxStatus{}}
	rt.set("sb-owner", string(owner.UID), "10.0.0.20", runtimeapi.PodSandboxState_SANDBOX_READY)
	sb := connect(t, rt)
	tests := []struct {
		name    string
		runtime *sandboxes
		status  int
		want    string
	}{
		{"cache alone: the newer pod may hold the IP", nil, http.StatusForbidden, "may hold this address"},
		{"runtime confirms the owner: served", sb, http.StatusOK, "tok-client-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, &id, binding("ns", "bind-a", "sel", "id-a"), owner, newer)
			f.server.runtime = tt.runtime
			if rec := f.do(t, "10.0.0.20", tok, true); rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.want) {
				t.Fatalf("got %d %s; want %d containing %q", rec.Code, rec.Body, tt.status, tt.want)
			}
		})
	}
}

// connect serves rt and returns NMI's client of it.
func connect(t *testing.T, rt *fakeRuntime) *sandboxes {
	t.Helper()
	socket, _ := serveRuntime(t, rt)
	sb, conn, err := dialRuntime(socket, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return sb
}

// A container may call before the kubelet has reported its pod's IP (on a
// busy node, seconds later): with the runtime's socket NMI finds the pod
// whose ready sandbox has the address among the node's pods without a
// reported IP, at once; nothing else is taken for the caller.
func TestRuntimeFindsCallerBeforeItsIPIsReported(t *testing.T) {
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=r"
	id := azureIdentity("id-a", "client-a", "")
	fresh := pod("fresh", "", admitted("ns/id-a"), created(2*time.Second), sandbox(corev1.ConditionTrue, time.Second))
	tests := []struct {
		name      string
		runtime   bool
		sandboxes func(*fakeRuntime)
		status    int
		want      string
	}{
		{"runtime: the pod whose sandbox has the IP", true, func(rt *fakeRuntime) {
			rt.set("sb-fresh", string(fresh.UID), "10.0.0.30", runtimeapi.PodSandboxState_SANDBOX_READY)
		}, http.StatusOK, "tok-client-a"},
		{"cache alone: unknown until the kubelet reports it", false, nil, http.StatusForbidden, "No running pod on this node has IP 10.0.0.30"},
		{"runtime: the pod's sandbox has another IP", true, func(rt *fakeRuntime) {
			rt.set("sb-fresh", string(fresh.UID), "10.0.0.31", runtimeapi.PodSandboxState_SANDBOX_READY)
		}, http.StatusForbidden, "No running pod on this node has IP 10.0.0.30"},
		{"runtime: the sandbox with the IP is not ready", true, func(rt *fakeRuntime) {
			rt.set("sb-fresh", string(fresh.UID), "10.0.0.30", runtimeapi.PodSandboxState_SANDBOX_NOTREADY)
		}, http.StatusForbidden, "No running pod on this node has IP 10.0.0.30"},
		{"runtime: the sandbox with the IP is of a pod this node's cache does not have", true, func(rt *fakeRuntime) {
			rt.set("sb-ghost", "uid-ghost", "10.0.0.30", runtimeapi.PodSandboxState_SANDBOX_READY)
		}, http.StatusForbidden, "No running pod on this node has IP 10.0.0.30"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, &id, binding("ns", "bind-a", "sel", "id-a"), fresh)
			if tt.runtime {
				rt := &fakeRuntime{sandboxes: map[string]*runtimeapi.PodSandboxStatus{}}
				tt.sandboxes(rt)
				f.server.runtime = connect(t, rt)
			}
			if rec := f.do(t, "10.0.0.30", tok, true); rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.want) {
				t.Fatalf("got %d %s; want %d containing %q", rec.Code, rec.Body, tt.status, tt.want)
			}
		})
	}
}
