package nmi

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// reasonNotConfirmed: the container runtime does not give the source IP to
// the pod the cache names; the cache may be behind (IP reuse).
const reasonNotConfirmed = "ip_not_confirmed"

// podUIDLabel is the label the kubelet puts on every pod sandbox.
const podUIDLabel = "io.kubernetes.pod.uid"

// sandboxes confirms a caller with the node's container runtime (CRI): the
// pod NMI's cache maps the source IP to must have a ready sandbox with that
// IP. The cache learns of a pod's end and of its IP's next owner through
// the apiserver, moments after the runtime; the runtime is authoritative.
type sandboxes struct {
	runtime runtimeapi.RuntimeServiceClient
	timeout time.Duration
}

// dialRuntime connects to the CRI socket; the connection is made lazily
// and re-made by gRPC when the runtime restarts.
func dialRuntime(socket string, timeout time.Duration) (*sandboxes, *grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to the container runtime at %s: %w", socket, err)
	}
	return &sandboxes{runtime: runtimeapi.NewRuntimeServiceClient(conn), timeout: timeout}, conn, nil
}

// confirm returns nil if a ready sandbox of pod has ip.
func (s *sandboxes) confirm(ctx context.Context, pod *corev1.Pod, ip string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ready, err := s.ready(ctx, map[string]string{podUIDLabel: string(pod.UID)})
	if err != nil {
		return err
	}
	for _, sb := range ready {
		if has, err := s.hasIP(ctx, sb.GetId(), ip); err != nil || has {
			return err
		}
	}
	return forbidden(reasonNotConfirmed, "The container runtime does not report IP %s for the pod this node's cache gives it; retry in a moment", ip)
}

// ownerWithoutIP finds, among this node's live pods whose IP the kubelet
// has not reported yet, the one with a ready sandbox that has ip, or nil.
// A container may call as soon as it starts, and on a busy node the
// kubelet's status with its IP reaches the cache seconds later (a 100-pod
// burst on 2 busy cores had callers refused after 5 s); the runtime already
// ties the address to the pod, and the cache still says what the pod is.
// Without such pods, as on a node at rest, the runtime is not asked.
func (s *sandboxes) ownerWithoutIP(ctx context.Context, r client.Reader, ip string) (*corev1.Pod, error) {
	var pending corev1.PodList
	if err := r.List(ctx, &pending, client.MatchingFields{podIPIndex: noIP}); err != nil {
		return nil, fmt.Errorf("listing pods without IP: %w", err)
	}
	byUID := map[string]*corev1.Pod{}
	for i := range pending.Items {
		if p := &pending.Items[i]; live(p) {
			byUID[string(p.UID)] = p
		}
	}
	if len(byUID) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ready, err := s.ready(ctx, nil)
	if err != nil {
		return nil, err
	}
	var found *corev1.Pod
	for _, sb := range ready {
		pod, ok := byUID[sb.GetLabels()[podUIDLabel]]
		if !ok || pod == found {
			continue
		}
		has, err := s.hasIP(ctx, sb.GetId(), ip)
		if err != nil {
			return nil, err
		}
		if has && found != nil {
			return nil, forbidden("ambiguous_caller", "Several pods on this node have IP %s; refusing to guess", ip)
		}
		if has {
			found = pod
		}
	}
	return found, nil
}

// ready lists the ready pod sandboxes with labels (nil: all).
func (s *sandboxes) ready(ctx context.Context, labels map[string]string) ([]*runtimeapi.PodSandbox, error) {
	list, err := s.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: labels,
	}})
	if err != nil {
		return nil, runtimeUnavailable(err)
	}
	return list.GetItems(), nil
}

// hasIP reports whether the sandbox id has ip.
func (s *sandboxes) hasIP(ctx context.Context, id, ip string) (bool, error) {
	st, err := s.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
	if err != nil {
		return false, runtimeUnavailable(err)
	}
	return slices.Contains(sandboxIPs(st.GetStatus()), ip), nil
}

// runtimeUnavailable fails closed: without the runtime's word, no caller is
// trusted.
func runtimeUnavailable(err error) error {
	e := newError(http.StatusServiceUnavailable, "service_unavailable", "runtime_unavailable", "NMI cannot confirm the caller with the container runtime; retry later")
	e.retryAfter = time.Second
	return fmt.Errorf("%w (%w)", e, err)
}

func sandboxIPs(st *runtimeapi.PodSandboxStatus) []string {
	n := st.GetNetwork()
	if n == nil {
		return nil
	}
	ips := []string{n.GetIp()}
	for _, a := range n.GetAdditionalIps() {
		ips = append(ips, a.GetIp())
	}
	return ips
}
