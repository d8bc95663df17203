package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/go-logr/logr"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// Images maps container images to the binaries the sandbox runs for them.
// A key without a tag matches every tag of that repository.
type Images map[string]string

// binary finds the program for a container: the image's binary, or, when
// the container sets a command, the binary named by its first word.
func (im Images) binary(c corev1.Container) (string, error) {
	bin, ok := im[c.Image]
	if !ok {
		repo := c.Image
		if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
			repo = repo[:i]
		}
		bin, ok = im[repo]
	}
	if !ok {
		known := make([]string, 0, len(im))
		for k := range im {
			known = append(known, k)
		}
		sort.Strings(known)
		return "", fmt.Errorf("image %q is not one the sandbox can run (known: %s)", c.Image, strings.Join(known, ", "))
	}
	if len(c.Command) > 0 && path.Base(c.Command[0]) != filepath.Base(bin) {
		return "", fmt.Errorf("command %q is not in image %q, whose program is %s", c.Command[0], c.Image, filepath.Base(bin))
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("image %q: binary not built: %w", c.Image, err)
	}
	return bin, nil
}

// podWorkers is each node's virtual-kubelet workers per queue (pod sync,
// deletion, status).
const podWorkers = 16

// kubelet is the stand-in for one node: a virtual-kubelet provider that runs
// pods as processes in network namespaces.
type kubelet struct {
	sb      *Sandbox
	index   int
	name    string
	nodeIP  net.IP
	netns   ns.NetNS
	client  kubernetes.Interface
	images  Images
	log     logr.Logger
	notifyF func(*corev1.Pod)

	mu    sync.Mutex
	pods  map[string]*podRun
	ips   map[byte]bool
	ready chan struct{}
}

var _ node.PodLifecycleHandler = &kubelet{}
var _ node.PodNotifier = &kubelet{}

func podKey(ns, name string) string { return ns + "/" + name }

func (k *kubelet) NotifyPods(_ context.Context, f func(*corev1.Pod)) {
	k.notifyF = f
	close(k.ready)
}

func (k *kubelet) notify(p *corev1.Pod) {
	<-k.ready
	k.notifyF(p)
}

// CreatePod sets the pod up and starts its containers in the background;
// failures show in the pod's status.
func (k *kubelet) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	k.mu.Lock()
	if _, ok := k.pods[key]; ok {
		k.mu.Unlock()
		return nil
	}
	runCtx, cancel := context.WithCancel(context.Background())
	r := &podRun{k: k, key: key, ctx: runCtx, cancel: cancel, pod: pod.DeepCopy(),
		dir: filepath.Join(k.sb.Dir, "pods", string(pod.UID))}
	k.pods[key] = r
	k.mu.Unlock()

	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := r.setup(); err != nil {
			k.log.Info("pod setup failed", "pod", key, "error", err.Error())
			r.mu.Lock()
			failed := r.failure != ""
			r.mu.Unlock()
			if !failed {
				r.fail("SandboxSetupError", err.Error())
			}
			return
		}
		if r.ctx.Err() == nil { // not deleted during setup
			r.notify()
			r.start()
		}
	}()
	return nil
}

// UpdatePod keeps the latest metadata (labels, annotations) for the
// downward API; containers are not restarted.
func (k *kubelet) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	k.mu.Lock()
	r := k.pods[podKey(pod.Namespace, pod.Name)]
	k.mu.Unlock()
	if r == nil {
		return errdefs.NotFoundf("pod %s/%s", pod.Namespace, pod.Name)
	}
	r.mu.Lock()
	r.pod.ObjectMeta = *pod.ObjectMeta.DeepCopy()
	r.mu.Unlock()
	return nil
}

// DeletePod kills the containers, removes the pod's namespace and files and
// reports the terminal status.
func (k *kubelet) DeletePod(_ context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	k.mu.Lock()
	r := k.pods[key]
	k.mu.Unlock()
	if r == nil {
		return errdefs.NotFoundf("pod %s", key)
	}
	if err := r.stop(); err != nil {
		k.log.Error(err, "pod cleanup", "pod", key)
	}
	final := r.status()
	for i := range final.Status.ContainerStatuses {
		cs := &final.Status.ContainerStatuses[i]
		cs.Ready = false
		if cs.State.Terminated == nil {
			cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "Killed", FinishedAt: metav1.Now()}}
		}
	}
	if final.Status.Phase == corev1.PodRunning || final.Status.Phase == corev1.PodPending {
		final.Status.Phase = corev1.PodSucceeded
	}
	k.mu.Lock()
	delete(k.pods, key)
	k.mu.Unlock()
	k.notify(final)
	// As the kubelet's status manager does once containers are gone: finish
	// the deletion now rather than after the whole grace period.
	uid := pod.UID
	err := k.client.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name,
		metav1.DeleteOptions{GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		k.log.Error(err, "finishing pod deletion", "pod", key)
	}
	return nil
}

func (k *kubelet) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	k.mu.Lock()
	r := k.pods[podKey(namespace, name)]
	k.mu.Unlock()
	if r == nil {
		return nil, errdefs.NotFoundf("pod %s/%s", namespace, name)
	}
	return r.status(), nil
}

func (k *kubelet) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	p, err := k.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &p.Status, nil
}

func (k *kubelet) GetPods(context.Context) ([]*corev1.Pod, error) {
	k.mu.Lock()
	runs := make([]*podRun, 0, len(k.pods))
	for _, r := range k.pods {
		runs = append(runs, r)
	}
	k.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(runs))
	for _, r := range runs {
		out = append(out, r.status())
	}
	return out, nil
}

// GetContainerLogs serves `kubectl logs`: the container's output file, its
// tail, or a follow stream until the pod goes.
func (k *kubelet) GetContainerLogs(ctx context.Context, namespace, pod, container string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	k.mu.Lock()
	r := k.pods[podKey(namespace, pod)]
	k.mu.Unlock()
	if r == nil {
		return nil, errdefs.NotFoundf("pod %s/%s", namespace, pod)
	}
	var cr *containerRun
	r.mu.Lock()
	for _, c := range append(r.inits, r.containers...) {
		if c.spec.Name == container {
			cr = c
		}
	}
	r.mu.Unlock()
	if cr == nil {
		return nil, errdefs.NotFoundf("container %s in pod %s/%s", container, namespace, pod)
	}
	file := cr.logPath
	if opts.Previous {
		file += ".previous"
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, errdefs.NotFoundf("logs of %s/%s/%s: %v", namespace, pod, container, err)
	}
	if opts.Tail > 0 {
		data = tail(data, opts.Tail)
	}
	if !opts.Follow {
		return io.NopCloser(bytes.NewReader(data)), nil
	}
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write(data)
		offset := int64(len(data))
		if opts.Tail > 0 {
			fi, err := os.Stat(file)
			if err == nil {
				offset = fi.Size()
			}
		}
		for ctx.Err() == nil && r.ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			f, err := os.Open(file)
			if err != nil {
				break
			}
			n, _ := f.Seek(offset, io.SeekStart)
			w, _ := io.Copy(pw, f)
			f.Close()
			offset = n + w
		}
		pw.Close()
	}()
	return pr, nil
}

func tail(data []byte, n int) []byte {
	var lines [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		lines = append(lines, append(append([]byte{}, sc.Bytes()...), '\n'))
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, nil)
}

func (k *kubelet) allocateIP() (byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for b := byte(2); b < 255; b++ {
		if !k.ips[b] {
			k.ips[b] = true
			return b, nil
		}
	}
	return 0, fmt.Errorf("node %s has no pod address left", k.name)
}

func (k *kubelet) releaseIP(b byte) {
	k.mu.Lock()
	delete(k.ips, b)
	k.mu.Unlock()
}

// run registers the node and serves pods until ctx ends, then stops every
// pod.
func (k *kubelet) run(ctx context.Context, nodeSpec *corev1.Node, errc chan<- error) {
	podInformers := informers.NewSharedInformerFactoryWithOptions(k.client, time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.name).String()
		}))
	other := informers.NewSharedInformerFactory(k.client, time.Minute)
	eb := record.NewBroadcaster()
	eb.StartRecordingToSink(&corev1client.EventSinkImpl{Interface: k.client.CoreV1().Events("")})
	defer eb.Shutdown()
	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:         statusPatcher{k.client.CoreV1()},
		PodInformer:       podInformers.Core().V1().Pods(),
		EventRecorder:     eb.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: k.name}),
		Provider:          k,
		ConfigMapInformer: other.Core().V1().ConfigMaps(),
		SecretInformer:    other.Core().V1().Secrets(),
		ServiceInformer:   other.Core().V1().Services(),
		// The stand-in resolves env itself, after the pod IP is known.
		SkipDownwardAPIResolution: true,
	})
	if err != nil {
		errc <- err
		return
	}
	nc, err := node.NewNodeController(node.NewNaiveNodeProvider(), nodeSpec, k.client.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease), node.DefaultLeaseDuration))
	if err != nil {
		errc <- err
		return
	}
	stopHTTP, err := k.serveHTTP(pc)
	if err != nil {
		errc <- err
		return
	}
	defer stopHTTP()
	podInformers.Start(ctx.Done())
	other.Start(ctx.Done())
	// Enough workers that a burst of pods reports its IPs without queueing
	// behind each other (a kubelet updates statuses concurrently too).
	go func() { _ = pc.Run(ctx, podWorkers) }()
	go func() { _ = nc.Run(ctx) }()
	select {
	case <-nc.Ready():
		errc <- nil
	case <-nc.Done():
		errc <- fmt.Errorf("node %s: %w", k.name, nc.Err())
	case <-ctx.Done():
		errc <- ctx.Err()
	}
	<-ctx.Done()
	<-pc.Done()
	k.mu.Lock()
	runs := make([]*podRun, 0, len(k.pods))
	for _, r := range k.pods {
		runs = append(runs, r)
	}
	k.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.stop() }()
	}
	wg.Wait()
}

// serveHTTP serves the kubelet API (logs, pods) on the node's address, port
// 10250, to clients holding a certificate of the sandbox CA (the apiserver).
func (k *kubelet) serveHTTP(pc *node.PodController) (func(), error) {
	cfg, err := k.sb.ca.ServerTLSConfig(k.nodeIP.String(), k.name)
	if err != nil {
		return nil, err
	}
	cfg.ClientCAs, cfg.ClientAuth = k.sb.ca.Pool, tls.RequireAndVerifyClientCert
	l, err := testns.Listen(k.netns, net.JoinHostPort(k.nodeIP.String(), "10250"))
	if err != nil {
		return nil, fmt.Errorf("kubelet API listener: %w", err)
	}
	mux := http.NewServeMux()
	api.AttachPodRoutes(api.PodHandlerConfig{
		GetContainerLogs: k.GetContainerLogs,
		GetPods:          k.GetPods,
	}, mux, false)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = srv.Serve(tls.NewListener(l, cfg)) }()
	return func() { _ = srv.Close() }, nil
}

// nodeObject is the Node the stand-in registers.
func nodeObject(name, providerID, pool string, ip net.IP, taints []corev1.Taint) *corev1.Node {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("8"),
		corev1.ResourceMemory:           resource.MustParse("32Gi"),
		corev1.ResourcePods:             resource.MustParse("250"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/os":               "linux",
			"kubernetes.io/arch":             "amd64",
			"kubernetes.io/hostname":         name,
			"kubernetes.azure.com/agentpool": pool,
			"agentpool":                      pool,
			"type":                           "sandbox",
		}},
		Spec: corev1.NodeSpec{ProviderID: providerID, Taints: taints},
		Status: corev1.NodeStatus{
			Phase:       corev1.NodeRunning,
			Capacity:    capacity,
			Allocatable: capacity,
			Addresses:   []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}, {Type: corev1.NodeHostName, Address: name}},
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"),
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
			NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64",
				KubeletVersion: "v1.37.2", ContainerRuntimeVersion: "sandbox://0.1", OSImage: "aad-pod-identity sandbox"},
		},
	}
}

// DefaultImages maps this project's images, the walkthrough's demo image and
// the images of the chart's uninstall hooks to the binaries BuildBinaries
// puts in binDir and to the control plane's kubectl in assets.
func DefaultImages(binDir, assets string) Images {
	im := Images{
		"mcr.microsoft.com/oss/azure/aad-pod-identity/demo:v1.7.5": filepath.Join(binDir, "demo"),
		"registry.k8s.io/kubectl":                                  filepath.Join(assets, "kubectl"),
		"registry.k8s.io/pause":                                    filepath.Join(binDir, "pause"),
	}
	for _, c := range []string{"webhook", "assigner", "nmi", "demo"} {
		im["ghcr.io/aad-pod-identity/"+c] = filepath.Join(binDir, c)
	}
	return im
}

// statusPatcher makes virtual-kubelet write pod status as the kubelet's
// status manager does, as a patch of status alone. Virtual-kubelet sends its
// whole cached pod to pods/status, metadata included; a copy older than the
// latest label or annotation change would write the old ones back (the
// status strategy keeps metadata), and the chart's policy on pods/status
// rightly refuses that.
type statusPatcher struct {
	corev1client.PodsGetter
}

func (s statusPatcher) Pods(namespace string) corev1client.PodInterface {
	return statusPatchingPods{s.PodsGetter.Pods(namespace)}
}

type statusPatchingPods struct {
	corev1client.PodInterface
}

func (p statusPatchingPods) UpdateStatus(ctx context.Context, pod *corev1.Pod, _ metav1.UpdateOptions) (*corev1.Pod, error) {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"uid": pod.UID}, "status": pod.Status})
	if err != nil {
		return nil, err
	}
	return p.Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
}
