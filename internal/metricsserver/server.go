// Package metricsserver serves a Prometheus registry as internal/metrics has
// controller-runtime's manager serve it (over HTTPS to callers the apiserver
// authenticates and authorizes for get on the nonResourceURL /metrics, or in
// plain HTTP), for a component without a manager. It asks the apiserver
// through client-go's TokenReview and SubjectAccessReview clients rather
// than controller-runtime's metrics filters, which link k8s.io/apiserver and
// the CEL, OpenTelemetry and gRPC code behind it: NMI runs on every node,
// and its binary's pages are most of its memory.
package metricsserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	authenticationv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	authorizationv1 "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/client-go/rest"
	certutil "k8s.io/client-go/util/cert"
)

// Path is where the metrics are served.
const Path = "/metrics"

// Handler serves the gatherer's metrics at Path; when secure, only to
// callers the apiserver authenticates and authorizes for get on Path, which
// needs create on tokenreviews and subjectaccessreviews.
func Handler(cfg *rest.Config, httpClient *http.Client, g prometheus.Gatherer, secure bool, log logr.Logger) (http.Handler, error) {
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
	if secure {
		authn, err := authenticationv1.NewForConfigAndClient(cfg, httpClient)
		if err != nil {
			return nil, fmt.Errorf("metrics authentication: %w", err)
		}
		authz, err := authorizationv1.NewForConfigAndClient(cfg, httpClient)
		if err != nil {
			return nil, fmt.Errorf("metrics authorization: %w", err)
		}
		h = newReviewer(authn.TokenReviews(), authz.SubjectAccessReviews(), log).wrap(h)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	return mux, nil
}

// Listen listens on addr, behind TLS with a self-signed certificate (the
// manager's default too) when secure: scrapers authenticate to the
// component with their token, not the component to them.
func Listen(ctx context.Context, addr string, secure bool) (net.Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("serving metrics on %s: %w", addr, err)
	}
	if !secure {
		return l, nil
	}
	cert, key, err := certutil.GenerateSelfSignedCertKeyWithFixtures("localhost", []net.IP{{127, 0, 0, 1}}, nil, "")
	if err == nil {
		var pair tls.Certificate
		if pair, err = tls.X509KeyPair(cert, key); err == nil {
			return tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}), nil
		}
	}
	_ = l.Close() // not served
	return nil, fmt.Errorf("serving metrics: self-signed certificate: %w", err)
}
