package assigner

import (
	"errors"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	armRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "aadpodidentity_assigner_arm_requests_total",
		Help: "ARM requests by operation (get, patch) and HTTP status code (0: no response).",
	}, []string{"operation", "code"})
	armDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "aadpodidentity_assigner_arm_request_duration_seconds",
		Help:    "ARM request duration by operation; a patch includes its long-running operation.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
	}, []string{"operation"})
	armThrottled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "aadpodidentity_assigner_arm_throttled_total",
		Help: "ARM 429 responses; writes to the scope pause for Retry-After.",
	})
	podReady = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "aadpodidentity_assigner_pod_identity_ready_seconds",
		Help:    "Time from pod creation to its identities assigned and the scheduling gate lifted.",
		Buckets: prometheus.ExponentialBuckets(0.25, 2, 12),
	})
	assignmentFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "aadpodidentity_assigner_assignment_failures_total",
		Help: "Identities ARM refused for a pool (entry marked Failed).",
	})
	recordWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "aadpodidentity_assigner_record_status_writes_total",
		Help: "Status writes of the pools' AzureAssignedIdentity records (each carries every change of its round).",
	})
)

func init() {
	metrics.Registry.MustRegister(armRequests, armDuration, armThrottled, podReady, assignmentFailures, recordWrites)
}

func observeARM(op string, start time.Time, err *error) {
	armDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	code := "200"
	if *err != nil {
		code = "0"
		var re *azcore.ResponseError
		if errors.As(*err, &re) {
			code = strconv.Itoa(re.StatusCode)
		}
	}
	armRequests.WithLabelValues(op, code).Inc()
}
