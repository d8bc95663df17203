package webhook

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Admission latency is controller-runtime's
// controller_runtime_webhook_latency_seconds{webhook=<path>}; this adds the
// outcome and its reason, which controller-runtime cannot know.
var admissionOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "aadpodidentity_admission_outcomes_total",
	Help: "Admission decisions by webhook, whether the request was allowed, and reason.",
}, []string{"webhook", "allowed", "reason"})

var gatesLifted = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "aadpodidentity_webhook_gates_lifted_total",
	Help: "Scheduling gates the webhook lifted in managed mode (pods gated while the release ran in standard mode).",
})

var podsAdopted = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "aadpodidentity_webhook_pods_adopted_total",
	Help: "Labelled pods created before the webhook that it resolved and annotated (webhook.adoptPreexistingPods).",
})

func init() {
	metrics.Registry.MustRegister(admissionOutcomes, gatesLifted, podsAdopted)
}

// Reasons recorded in admissionOutcomes; a small fixed set keeps the metric's
// cardinality bounded.
const (
	reasonIgnored            = "ignored"
	reasonBadRequest         = "bad-request"
	reasonLookupError        = "lookup-error"
	reasonResolved           = "resolved"
	reasonNoBinding          = "no-binding"
	reasonAnnotationMismatch = "annotation-mismatch"
	reasonUntrustedChange    = "untrusted-change"
	reasonTrusted            = "trusted"
	reasonUnchanged          = "unchanged"
	reasonValid              = "valid"
	reasonWarned             = "warned"
	reasonProtectedIdentity  = "protected-identity"
	reasonNotCovered         = "not-covered-by-nmi"
	reasonIdentityOutOfScope = "identity-out-of-scope"
	reasonNonASCIIID         = "non-ascii-id"
	reasonLegacySpelling     = "legacy-spelling"
)
