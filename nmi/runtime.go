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
	list, err := s.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{podUIDLabel: string(pod.UID)},
	}})
	if err != nil {
		return runtimeUnavailable(err)
	}
	for _, sb := range list.GetItems() {
		st, err := s.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.GetId()})
		if err != nil {
			return runtimeUnavailable(err)
		}
		if slices.Contains(sandboxIPs(st.GetStatus()), ip) {
			return nil
		}
	}
	return forbidden(reasonNotConfirmed, "The container runtime does not report IP %s for the pod this node's cache gives it; retry in a moment", ip)
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
