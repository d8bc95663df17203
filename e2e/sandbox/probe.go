package sandbox

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// probe runs the container's readiness and liveness probes from the node's
// network namespace, as the kubelet does: readiness sets the container's
// Ready, liveness failures past the threshold restart it.
func (r *podRun) probe(cr *containerRun) {
	defer r.wg.Done()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return testns.Dial(ctx, r.k.netns, network, addr)
		},
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // as the kubelet: probes do not verify
		DisableKeepAlives: true,
	}}
	type state struct {
		p                   *corev1.Probe
		successes, failures int32
		last                time.Time
	}
	var probes []*state
	for _, p := range []*corev1.Probe{cr.spec.ReadinessProbe, cr.spec.LivenessProbe} {
		if p != nil {
			probes = append(probes, &state{p: p})
		}
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-tick.C:
		}
		r.mu.Lock()
		running := cr.status.State.Running
		ready := cr.status.Ready
		r.mu.Unlock()
		if running == nil {
			continue
		}
		for _, s := range probes {
			p := s.p
			if time.Since(running.StartedAt.Time) < time.Duration(p.InitialDelaySeconds)*time.Second ||
				time.Since(s.last) < time.Duration(max(p.PeriodSeconds, 1))*time.Second {
				continue
			}
			s.last = time.Now()
			ok := r.check(client, cr, p) == nil
			if ok {
				s.successes, s.failures = s.successes+1, 0
			} else {
				s.failures, s.successes = s.failures+1, 0
			}
			if p == cr.spec.ReadinessProbe {
				switch {
				case ok && !ready && s.successes >= max(p.SuccessThreshold, 1):
					r.setReady(cr, true)
				case !ok && ready && s.failures >= max(p.FailureThreshold, 1):
					r.setReady(cr, false)
				}
				continue
			}
			if !ok && s.failures >= max(p.FailureThreshold, 1) {
				s.failures = 0
				select {
				case cr.kill <- struct{}{}:
				default:
				}
			}
		}
	}
}

func (r *podRun) setReady(cr *containerRun, ready bool) {
	r.mu.Lock()
	if cr.status.State.Running == nil {
		r.mu.Unlock()
		return
	}
	cr.status.Ready = ready
	r.mu.Unlock()
	r.notify()
}

// check runs one HTTP GET or TCP probe against the pod's IP.
func (r *podRun) check(client *http.Client, cr *containerRun, p *corev1.Probe) error {
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		port, err := resolvePort(p.HTTPGet.Port, cr.spec)
		if err != nil {
			return err
		}
		host := r.podIP
		if p.HTTPGet.Host != "" {
			host = p.HTTPGet.Host
		}
		scheme := "http"
		if p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), p.HTTPGet.Path), nil)
		if err != nil {
			return err
		}
		for _, h := range p.HTTPGet.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, cr.spec)
		if err != nil {
			return err
		}
		c, err := testns.Dial(ctx, r.k.netns, "tcp", net.JoinHostPort(r.podIP, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return c.Close()
	}
	// Fail closed: a probe the sandbox cannot run never reports success.
	return fmt.Errorf("probe type not supported by the sandbox kubelet")
}

func resolvePort(p intstr.IntOrString, c corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("no container port named %q", p.StrVal)
}
