// Package metrics serves the components' Prometheus metrics the same way:
// over HTTPS to callers the apiserver authenticates and authorizes (get on
// the nonResourceURL /metrics), or, when asked, in plain HTTP.
package metrics

import (
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// ServerOptions are the manager's metrics options for addr ("0" disables
// the endpoint). Secure needs create on tokenreviews and
// subjectaccessreviews.
func ServerOptions(addr string, secure bool) metricsserver.Options {
	o := metricsserver.Options{BindAddress: addr}
	if secure {
		o.SecureServing = true
		o.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return o
}
