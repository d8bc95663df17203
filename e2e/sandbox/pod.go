package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volumeRefreshPeriod is how often Secret and ConfigMap volumes are
// re-read (the kubelet takes up to a minute; tests should not wait that long).
const volumeRefreshPeriod = 2 * time.Second

// podRun is one pod on a sandbox node: its network namespace, volumes and
// containers.
type podRun struct {
	k       *kubelet
	key     string // namespace/name
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	dir     string
	netns   ns.NetNS
	nsName  string // "" for hostNetwork pods
	ipByte  byte
	podIP   string
	volumes map[string]string

	mu         sync.Mutex
	pod        *corev1.Pod
	inits      []*containerRun // init containers, run in order before the others
	containers []*containerRun
	// initialized is set once every init container exited 0.
	initialized bool
	failure     string // pod-level failure reason, set before any container runs
	message     string
}

type containerRun struct {
	spec    corev1.Container
	binary  string
	logPath string
	proc    *process
	status  corev1.ContainerStatus
	kill    chan struct{} // liveness failure: restart the process
}

// status builds the pod status from the containers' states.
func (r *podRun) status() *corev1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	pod := r.pod.DeepCopy()
	now := metav1.Now()
	st := &pod.Status
	st.HostIP = r.k.nodeIP.String()
	st.HostIPs = []corev1.HostIP{{IP: st.HostIP}}
	if r.podIP != "" {
		st.PodIP = r.podIP
		st.PodIPs = []corev1.PodIP{{IP: r.podIP}}
	}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	if r.failure != "" {
		st.Phase, st.Reason, st.Message = corev1.PodFailed, r.failure, r.message
	}
	st.InitContainerStatuses = nil
	for _, c := range r.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, *c.status.DeepCopy())
	}
	initialized := r.initialized || len(r.inits) == 0
	st.ContainerStatuses = nil
	allReady, running, failed, done := true, false, false, 0
	for _, c := range r.containers {
		cs := *c.status.DeepCopy()
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		switch {
		case cs.State.Running != nil, cs.State.Waiting != nil:
			running = true
		case cs.State.Terminated != nil:
			done++
			failed = failed || cs.State.Terminated.ExitCode != 0
		}
	}
	if r.failure == "" {
		// A terminated container that its restartPolicy restarts keeps the
		// pod Running: a terminal phase is final for the API and for
		// virtual-kubelet, which stops syncing status after it.
		policy := r.pod.Spec.RestartPolicy
		restarting := policy == corev1.RestartPolicyAlways || policy == "" || (policy == corev1.RestartPolicyOnFailure && failed)
		switch {
		case !initialized:
			st.Phase = corev1.PodPending
		case running || done < len(r.containers) || restarting:
			st.Phase = corev1.PodRunning
		case failed:
			st.Phase = corev1.PodFailed
		default:
			st.Phase = corev1.PodSucceeded
		}
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		for _, old := range r.pod.Status.Conditions {
			if old.Type == t && old.Status == s {
				return old
			}
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now}
	}
	ready := allReady && r.failure == "" && len(r.containers) > 0
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, r.failure == ""),
		cond(corev1.PodInitialized, initialized),
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
		cond(corev1.PodScheduled, true),
	}
	r.pod.Status.Conditions = st.Conditions
	r.pod.Status.StartTime = st.StartTime
	return pod
}

func (r *podRun) notify() { r.k.notify(r.status()) }

// fail marks the whole pod failed with a reason, e.g. an unknown image.
func (r *podRun) fail(reason, msg string) {
	r.mu.Lock()
	r.failure, r.message = reason, msg
	for _, c := range r.containers {
		c.status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	}
	r.mu.Unlock()
	r.notify()
}

// setup creates the network namespace and volumes and resolves images.
func (r *podRun) setup() error {
	r.mu.Lock()
	pod := r.pod.DeepCopy()
	newRun := func(c corev1.Container, waiting string) *containerRun {
		cr := &containerRun{spec: c, logPath: filepath.Join(r.dir, c.Name+".log"), kill: make(chan struct{}, 1)}
		cr.status = corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: waiting}}}
		return cr
	}
	for _, c := range pod.Spec.InitContainers {
		r.inits = append(r.inits, newRun(c, "PodInitializing"))
	}
	for _, c := range pod.Spec.Containers {
		r.containers = append(r.containers, newRun(c, "ContainerCreating"))
	}
	r.mu.Unlock()
	for _, cr := range append(r.inits, r.containers...) {
		bin, err := r.k.images.binary(cr.spec)
		if err != nil {
			r.fail("ErrImagePull", err.Error())
			return err
		}
		cr.binary = bin
	}
	if err := os.MkdirAll(filepath.Join(r.dir, "volumes"), 0o755); err != nil {
		return err
	}
	if pod.Spec.HostNetwork {
		r.mu.Lock()
		r.netns, r.podIP = r.k.netns, r.k.nodeIP.String()
		r.mu.Unlock()
	} else {
		ipByte, err := r.k.allocateIP()
		if err != nil {
			return err
		}
		r.ipByte = ipByte
		podIP := net.IPv4(10, 244, byte(r.k.index), ipByte)
		short := strings.ReplaceAll(string(pod.UID), "-", "")[:10]
		netns, err := r.k.sb.createNetNS("p" + short)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.netns, r.nsName = netns, r.k.sb.NetNSName("p"+short)
		r.mu.Unlock()
		if err := setupPodNS(r.k.netns, netns, r.k.index, podIP, "vp"+short[:10]); err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		r.mu.Lock()
		r.podIP = podIP.String()
		r.mu.Unlock()
	}
	// Like the kubelet, retry volumes until their sources exist (a Secret
	// created after the pod, kube-root-ca.crt not yet published).
	for {
		vols, err := prepareVolumes(r.ctx, r.k.client, pod, filepath.Join(r.dir, "volumes"))
		if err == nil {
			r.volumes = vols
			return nil
		}
		r.mu.Lock()
		for _, c := range r.containers {
			c.status.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating", Message: err.Error()}
		}
		r.mu.Unlock()
		r.notify()
		select {
		case <-r.ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

// start runs the init containers one after the other, then every container
// in its own restart loop, with probes.
func (r *podRun) start() {
	r.mu.Lock()
	pod := r.pod.DeepCopy()
	r.mu.Unlock()
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		refreshVolumes(r.ctx, r.k.client, pod, r.volumes, volumeRefreshPeriod)
	}()
	go func() {
		defer r.wg.Done()
		for _, cr := range r.inits {
			if !r.runInit(cr) {
				return
			}
		}
		if r.ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		r.initialized = true
		r.mu.Unlock()
		r.notify()
		for _, cr := range r.containers {
			r.wg.Add(1)
			go r.runContainer(cr)
			if cr.spec.ReadinessProbe != nil || cr.spec.LivenessProbe != nil {
				r.wg.Add(1)
				go r.probe(cr)
			}
		}
	}()
}

func (r *podRun) runContainer(cr *containerRun) {
	defer r.wg.Done()
	backoff := time.Second
	for {
		started := time.Now()
		if r.runOnce(cr, cr.spec.ReadinessProbe == nil) || !r.restarts(cr) || !r.backOff(cr, &backoff, started) {
			return
		}
	}
}

// runInit runs an init container until it exits 0, as the kubelet does:
// failures are retried unless the pod's restartPolicy is Never, which fails
// the pod. It reports whether the pod may go on.
func (r *podRun) runInit(cr *containerRun) bool {
	backoff := time.Second
	for {
		started := time.Now()
		if r.runOnce(cr, false) {
			return false
		}
		r.mu.Lock()
		t, never := cr.status.State.Terminated, r.pod.Spec.RestartPolicy == corev1.RestartPolicyNever
		r.mu.Unlock()
		switch {
		case t != nil && t.ExitCode == 0:
			return true
		case never:
			r.fail("Init:Error", fmt.Sprintf("init container %s failed", cr.spec.Name))
			return false
		case !r.backOff(cr, &backoff, started):
			return false
		}
	}
}

// runOnce runs one process of the container until it exits or is killed,
// and reports whether the pod is going away.
func (r *podRun) runOnce(cr *containerRun, readyWhenRunning bool) (stopped bool) {
	started := time.Now()
	p, err := r.exec(cr)
	if err != nil {
		r.setState(cr, corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CreateContainerError", Message: err.Error()}}, false)
		r.k.log.Error(err, "container did not start", "pod", r.key, "container", cr.spec.Name)
		return r.ctx.Err() != nil
	}
	r.mu.Lock()
	cr.proc = p
	r.mu.Unlock()
	r.setState(cr, corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(started)}}, readyWhenRunning)
	select {
	case <-p.done:
	case <-cr.kill:
		_ = p.stop(r.grace())
	case <-r.ctx.Done():
		_ = p.stop(r.grace())
		stopped = true
	}
	r.setState(cr, terminated(p, started), false)
	return stopped
}

// backOff counts a restart and waits the crash-loop delay; false when the
// pod goes away meanwhile.
func (r *podRun) backOff(cr *containerRun, backoff *time.Duration, started time.Time) bool {
	if time.Since(started) > time.Minute {
		*backoff = time.Second
	}
	r.mu.Lock()
	cr.status.RestartCount++
	cr.status.LastTerminationState = cr.status.State
	r.mu.Unlock()
	r.setState(cr, corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}, false)
	select {
	case <-r.ctx.Done():
		return false
	case <-time.After(*backoff):
	}
	*backoff = min(2**backoff, 10*time.Second)
	return true
}

func terminated(p *process, started time.Time) corev1.ContainerState {
	code, reason := 0, "Completed"
	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		code, reason = exit.ExitCode(), "Error"
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: int32(code), Reason: reason, StartedAt: metav1.NewTime(started), FinishedAt: metav1.Now()}}
}

// restarts applies the pod's restartPolicy to the container's last exit.
func (r *podRun) restarts(cr *containerRun) bool {
	if r.ctx.Err() != nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.pod.Spec.RestartPolicy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		t := cr.status.State.Terminated
		return t == nil || t.ExitCode != 0
	}
	return true
}

func (r *podRun) grace() time.Duration {
	g := int64(10)
	if r.pod.Spec.TerminationGracePeriodSeconds != nil {
		g = min(*r.pod.Spec.TerminationGracePeriodSeconds, g)
	}
	return time.Duration(g) * time.Second
}

func (r *podRun) setState(cr *containerRun, s corev1.ContainerState, ready bool) {
	r.mu.Lock()
	cr.status.State = s
	cr.status.Ready = ready
	cr.status.Started = ptrBool(s.Running != nil)
	if s.Running != nil {
		cr.status.ContainerID = fmt.Sprintf("sandbox://%s/%s/%d", r.pod.UID, cr.spec.Name, cr.status.RestartCount)
	}
	r.mu.Unlock()
	r.notify()
}

func ptrBool(b bool) *bool { return &b }

// exec starts one run of a container: podinit in a new mount namespace and
// the pod's network namespace, with the container's volumes, env and args.
func (r *podRun) exec(cr *containerRun) (*process, error) {
	// UpdatePod replaces the metadata while containers (re)start.
	r.mu.Lock()
	pod, restarts := r.pod.DeepCopy(), cr.status.RestartCount
	r.mu.Unlock()
	env, err := containerEnv(r.ctx, r.k.client, pod, &cr.spec, r.podIP, r.k.nodeIP.String())
	if err != nil {
		return nil, err
	}
	for k, v := range r.k.sb.podEnv() {
		if _, set := env[k]; !set {
			env[k] = v
		}
	}
	env["HOSTNAME"] = pod.Name
	if pod.Spec.HostNetwork {
		env["HOSTNAME"] = r.k.name
	}
	state := filepath.Join(r.dir, "run", fmt.Sprintf("%s-%d", cr.spec.Name, restarts))
	if err := os.MkdirAll(state, 0o755); err != nil {
		return nil, err
	}
	args := []string{"--state", state}
	if cr.spec.WorkingDir != "" {
		args = append(args, "--workdir", cr.spec.WorkingDir)
	}
	for _, m := range cr.spec.VolumeMounts {
		src, ok := r.volumes[m.Name]
		if !ok {
			return nil, fmt.Errorf("volume mount %s: no volume of that name", m.Name)
		}
		if m.SubPath != "" {
			src = filepath.Join(src, m.SubPath)
		}
		spec := src + ":" + m.MountPath
		if m.ReadOnly {
			spec += ":ro"
		}
		args = append(args, "--mount", spec)
	}
	if !pod.Spec.HostNetwork {
		if err := writeFiles(r.dir, map[string][]byte{"hosts": r.k.sb.podHosts(r.podIP, pod.Name)}); err != nil {
			return nil, err
		}
		args = append(args, "--mount", filepath.Join(r.dir, "hosts")+":/etc/hosts:ro")
	}
	argv := []string{cr.binary}
	if len(cr.spec.Command) > 1 {
		argv = append(argv, cr.spec.Command[1:]...)
	}
	argv = append(argv, cr.spec.Args...)
	for i := range argv[1:] {
		argv[i+1] = expand(argv[i+1], env)
	}
	args = append(append(args, "--"), argv...)
	cmd := exec.Command(r.k.sb.opts.PodInit, args...)
	cmd.Env = envList(env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if restarts > 0 {
		_ = os.Rename(cr.logPath, cr.logPath+".previous")
	}
	return startIn(r.netns, pod.Name+"/"+cr.spec.Name, cr.logPath, cmd)
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// stop ends setup and every container, then removes the pod's network
// namespace and files.
func (r *podRun) stop() error {
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	if r.nsName != "" {
		r.netns.Close()
		errs = append(errs, r.k.sb.removeNetNS(r.nsName))
		r.k.releaseIP(r.ipByte)
	}
	errs = append(errs, os.RemoveAll(r.dir))
	return errors.Join(errs...)
}
