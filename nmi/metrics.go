package nmi

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nmi_requests_total",
		Help: "Metadata requests answered, by HTTP status code and reason.",
	}, []string{"code", "reason"})
	requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "nmi_request_duration_seconds",
		Help:    "Time to answer a metadata request, by route.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"route"})
	tokenCacheTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nmi_token_cache_total",
		Help: "Token cache lookups, by result (hit or miss).",
	}, []string{"result"})
	tokenCacheEntries = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nmi_token_cache_entries",
		Help: "Tokens in the cache, at most nmi.tokenCacheSize.",
	})
	tokenCacheEvictions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nmi_token_cache_evictions_total",
		Help: "Tokens evicted, least recently used first, because the cache held nmi.tokenCacheSize.",
	})
	federatedPodsForgotten = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nmi_federated_pods_forgotten_total",
		Help: "Deleted pods whose service-account and Azure AD tokens NMI dropped.",
	})
	upstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "nmi_upstream_duration_seconds",
		Help:    "Latency of calls to IMDS, Azure AD and the apiserver's TokenRequest, by upstream.",
		Buckets: prometheus.DefBuckets,
	}, []string{"upstream"})
	upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nmi_upstream_errors_total",
		Help: "Failed calls to IMDS, Azure AD and the apiserver's TokenRequest, by upstream.",
	}, []string{"upstream"})
	panicsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nmi_panics_total",
		Help: "Panics recovered while serving a request or fetching a token; each was answered 500.",
	})
	connectionsRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nmi_connections_refused_total",
		Help: "Connections closed on accept because their source address had nmi.maxConnectionsPerIP open.",
	})
	waitingRequests = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nmi_waiting_requests",
		Help: "Requests waiting for NMI's cache to catch up (an unknown caller's IP, a newer pod's, the assigner's record).",
	})
	waitsRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nmi_waits_refused_total",
		Help: "Requests answered 503 at once instead of waiting, because nmi.maxWaitingRequests were waiting.",
	})
)

func init() {
	ctrlmetrics.Registry.MustRegister(requestsTotal, requestDuration, tokenCacheTotal, tokenCacheEntries, tokenCacheEvictions, federatedPodsForgotten, upstreamDuration, upstreamErrors, panicsTotal, connectionsRefused, waitingRequests, waitsRefused)
}
