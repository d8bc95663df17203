package intercept

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	rulesRepairs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nmi_iptables_repairs_total",
		Help: "Times the interception rules were found missing or different and rewritten.",
	})
	spoofGuardedPods = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nmi_antispoof_pods",
		Help: "Pod addresses the anti-spoofing chain ties to their host-side interface (nmi.cniCacheDir).",
	})
)

func init() {
	ctrlmetrics.Registry.MustRegister(rulesRepairs, spoofGuardedPods)
}
