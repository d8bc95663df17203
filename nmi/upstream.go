package nmi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// imdsTokenPath is IMDS's token path, as NMI sends it.
const imdsTokenPath = "/metadata/identity/oauth2/token"

// imdsClient asks the node's real IMDS for user-assigned identity tokens.
type imdsClient struct {
	endpoint *url.URL
	http     *http.Client
	// notFoundRetry paces retries while IMDS does not know the identity yet:
	// the assignment to the VMSS may still be reaching the instance.
	notFoundRetry wait.Backoff
}

// imdsErrorBody is IMDS's error JSON.
type imdsErrorBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

// token fetches a token for clientID, retrying while IMDS says the identity
// is not (yet) assigned to this VM.
func (c *imdsClient) token(ctx context.Context, clientID, resource string) (Token, error) {
	var tok Token
	var last error
	err := wait.ExponentialBackoffWithContext(ctx, c.notFoundRetry, func(ctx context.Context) (bool, error) {
		var retry bool
		tok, retry, last = c.fetch(ctx, clientID, resource)
		return last == nil || !retry, nil
	})
	if last != nil {
		return Token{}, last
	}
	if err != nil {
		return Token{}, fmt.Errorf("waiting for IMDS to know identity %s: %w", clientID, err)
	}
	return tok, nil
}

func (c *imdsClient) fetch(ctx context.Context, clientID, resource string) (tok Token, retry bool, err error) {
	u := c.endpoint.JoinPath(imdsTokenPath)
	u.RawQuery = url.Values{"api-version": {"2018-02-01"}, "resource": {resource}, "client_id": {clientID}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return Token{}, false, fmt.Errorf("building IMDS request: %w", err)
	}
	req.Header.Set("Metadata", "true")
	start := time.Now()
	resp, err := c.http.Do(req)
	upstreamDuration.WithLabelValues("imds").Observe(time.Since(start).Seconds())
	if err != nil {
		upstreamErrors.WithLabelValues("imds").Inc()
		return Token{}, false, newError(http.StatusBadGateway, "upstream_unreachable", "imds_unreachable", "Cannot reach IMDS at %s: %v", c.endpoint, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		upstreamErrors.WithLabelValues("imds").Inc()
		return Token{}, false, newError(http.StatusBadGateway, "upstream_unreachable", "imds_unreachable", "Reading IMDS answer: %v", err)
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &tok); err != nil || tok.AccessToken == "" {
			upstreamErrors.WithLabelValues("imds").Inc()
			return Token{}, false, newError(http.StatusBadGateway, "bad_upstream_answer", "imds_bad_answer", "IMDS answered 200 without a token: %.200s", body)
		}
		return tok, false, nil
	}
	upstreamErrors.WithLabelValues("imds").Inc()
	var eb imdsErrorBody
	_ = json.Unmarshal(body, &eb) // a body that is not IMDS JSON still gets its status passed on
	if eb.Error == "" {
		eb.Error = "upstream_error"
	}
	notFound := resp.StatusCode == http.StatusBadRequest && strings.Contains(strings.ToLower(eb.Description), "identity not found")
	if notFound {
		return Token{}, true, newError(http.StatusNotFound, eb.Error, "identity_not_assigned",
			"IMDS does not know identity %s on this node yet (%s): check `kubectl get azureassignedidentities -A` for its status on this node's pool", clientID, eb.Description)
	}
	return Token{}, false, newError(resp.StatusCode, eb.Error, "imds_error", "IMDS answered %d: %s", resp.StatusCode, eb.Description)
}

// upstreamTransport is Go's default transport keeping idle connections
// idle to each host (0: Go's default of 2).
func upstreamTransport(idle int) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if idle > 0 {
		t.MaxIdleConns, t.MaxIdleConnsPerHost = idle, idle
	}
	return t
}

// newPassthrough proxies requests unchanged to IMDS. It sets no
// X-Forwarded-For: IMDS refuses proxied requests that carry one.
func newPassthrough(endpoint *url.URL, transport http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(endpoint)
			pr.Out.Host = endpoint.Host
		},
		Transport: transport,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			upstreamErrors.WithLabelValues("imds").Inc()
			writeError(w, newError(http.StatusBadGateway, "upstream_unreachable", "imds_unreachable", "Cannot reach IMDS at %s: %v", endpoint, err))
		},
	}
}
