package nmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/metricsserver"
)

// newScheme holds only the kinds NMI reads and writes (its events are
// written through client-go's own scheme): the other built-in kinds would be
// registered for nothing.
func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	// authentication/v1: the TokenRequests of federated identities.
	if err := errors.Join(corev1.AddToScheme(s), authenticationv1.AddToScheme(s), aadv1.AddToScheme(s)); err != nil {
		return nil, fmt.Errorf("building the scheme: %w", err)
	}
	return s, nil
}

// trimPod keeps of a cached pod only what NMI reads: its metadata, and the
// spec and status fields below. The containers, volumes and their statuses
// are most of a pod, and NMI caches every pod of its node.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	pod.ManagedFields = nil
	pod.Spec = corev1.PodSpec{
		NodeName:           pod.Spec.NodeName,
		HostNetwork:        pod.Spec.HostNetwork,
		SchedulingGates:    pod.Spec.SchedulingGates,
		ServiceAccountName: pod.Spec.ServiceAccountName,
	}
	pod.Status = corev1.PodStatus{
		Phase:      pod.Status.Phase,
		Conditions: pod.Status.Conditions,
		PodIP:      pod.Status.PodIP,
		PodIPs:     pod.Status.PodIPs,
		StartTime:  pod.Status.StartTime,
	}
	return pod, nil
}

// serveMetrics serves the Prometheus metrics on opts.MetricsAddr until ctx
// ends; "0" disables them.
func serveMetrics(ctx context.Context, cfg *rest.Config, httpClient *http.Client, opts Options, log logr.Logger) error {
	if opts.MetricsAddr == "0" {
		return nil
	}
	h, err := metricsserver.Handler(cfg, httpClient, ctrlmetrics.Registry, opts.SecureMetrics, log)
	if err != nil {
		return err
	}
	l, err := metricsserver.Listen(ctx, opts.MetricsAddr, opts.SecureMetrics)
	if err != nil {
		return err
	}
	log.Info("serving metrics", "address", l.Addr().String(), "secure", opts.SecureMetrics)
	return serveHTTP(ctx, l, &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second})
}

// serveProbes serves probeHandler on addr until ctx ends; "0" disables
// the probes.
func serveProbes(ctx context.Context, addr string, ready map[string]healthz.Checker) error {
	if addr == "0" {
		return nil
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("serving health probes on %s: %w", addr, err)
	}
	return serveHTTP(ctx, l, &http.Server{Handler: probeHandler(ready), ReadHeaderTimeout: 5 * time.Second})
}

// probeHandler answers /healthz (NMI is up) and /readyz (the checks), and
// one check at /readyz/<name>, as a manager's health probes do.
func probeHandler(ready map[string]healthz.Checker) http.Handler {
	mux := http.NewServeMux()
	for path, h := range map[string]http.Handler{
		"/healthz": &healthz.Handler{Checks: map[string]healthz.Checker{"ping": healthz.Ping}},
		"/readyz":  &healthz.Handler{Checks: ready},
	} {
		mux.Handle(path, http.StripPrefix(path, h))
		mux.Handle(path+"/", http.StripPrefix(path, h))
	}
	return mux
}
