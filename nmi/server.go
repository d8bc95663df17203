package nmi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/gorilla/mux"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// tokenPath is IMDS's token path; IMDS matches its first segment in any case.
const tokenPath = "/{metadata:(?i)metadata}/identity/oauth2/token"

// Server answers metadata requests that iptables redirected from pods.
type Server struct {
	reader       client.Reader      // pods of this node (indexed by IP), identities, exceptions
	resolver     *identity.Resolver // a pod's label against the current bindings
	imds         *imdsClient
	sp           *servicePrincipals // nil: service principals disabled
	passthrough  *httputil.ReverseProxy
	allowedPaths []string
	exceptions   ExceptionPolicy
	protected    identity.Protected // never served, whatever an AzureIdentity says
	scopes       identity.Scopes    // where each namespace's identities may live
	assignments  *assignments       // vouch for user-assigned identities (standard mode)
	// mode is config.ModeStandard, ModeManaged or ModeFederated: it chooses
	// the token policy (newPolicy); managed is set in managed mode.
	mode    config.Mode
	managed *managedIdentities
	// federation serves federated identities (nil: policy.federation.enabled
	// is off).
	federation *federation
	runtime    *sandboxes // nil: callers are not confirmed with the CRI
	tokens     *tokenCache
	misses     *missLimiter
	waits      *waitLimit // shared by every request that waits for the cache
	// callerWait is how long an unknown source IP is looked up again.
	callerWait time.Duration
	log        logr.Logger
}

// Handler routes metadata requests. Paths are checked before routing, as
// sent: what reaches IMDS must be what NMI judged.
func (s *Server) Handler() http.Handler {
	r := mux.NewRouter()
	policy := newPolicy(s)
	r.Path(tokenPath).Handler(s.instrument("token", func(w http.ResponseWriter, r *http.Request) (string, error) { return s.token(w, r, policy) }))
	r.MatcherFunc(func(req *http.Request, _ *mux.RouteMatch) bool { return s.allowed(req.URL.Path) }).
		Handler(s.instrument("allowed", s.proxy))
	r.NotFoundHandler = s.instrument("other", s.other)
	invalid := s.instrument("invalid", func(_ http.ResponseWriter, r *http.Request) (string, error) {
		return "", badRequest("invalid_path", "Path %q is not a metadata path: only segments of letters, digits, '_' and '-' are served", r.URL.EscapedPath())
	})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !metadataPath.MatchString(req.URL.EscapedPath()) {
			invalid.ServeHTTP(w, req)
			return
		}
		r.ServeHTTP(w, req)
	})
}

// metadataPath is the shape of every IMDS path. Anything else (escapes,
// dots, backslashes, semicolons, empty segments) could mean one thing to
// NMI's allowlist and another to IMDS, so it is refused.
var metadataPath = regexp.MustCompile(`^/$|^(/[A-Za-z0-9_-]+)+/?$`)

// optInPaths are below the default allowlist but hold what people put
// there, secrets included: they are served only when an allowed path names
// them (or a path below them) explicitly.
var optInPaths = []string{"/metadata/instance/compute/userData"}

// allowed reports whether path is an allowlisted path or below one. IMDS's
// identity API is never proxied, whatever the allowlist says: tokens go
// through the token route, which checks what the pod may have.
func (s *Server) allowed(path string) bool {
	return !identityPath(path) && !s.optInRefused(path) && slices.ContainsFunc(s.allowedPaths, func(p string) bool { return under(path, p, func(a, b string) bool { return a == b }) })
}

// optInRefused reports whether path is below an opt-in path that no allowed
// path names.
func (s *Server) optInRefused(path string) bool {
	return slices.ContainsFunc(optInPaths, func(o string) bool {
		return under(path, o, strings.EqualFold) && !slices.ContainsFunc(s.allowedPaths, func(p string) bool { return under(p, o, strings.EqualFold) })
	})
}

// identityPath reports whether path is in IMDS's identity API, in any
// spelling IMDS may take for it (any case, a trailing slash, more segments).
func identityPath(path string) bool {
	return under(path, "/metadata/identity", strings.EqualFold)
}

// under reports whether path is base or below it, comparing with eq.
func under(path, base string, eq func(a, b string) bool) bool {
	base = strings.TrimSuffix(base, "/")
	return eq(path, base) || (len(path) > len(base) && path[len(base)] == '/' && eq(path[:len(base)], base))
}

type handlerFunc func(w http.ResponseWriter, r *http.Request) (reason string, err error)

// statusRecorder remembers the status code for metrics.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (s *Server) instrument(route string, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		reason, err := serveRecovered(rec, r, h)
		if err != nil {
			reason = writeError(rec, err)
			s.log.Info("request refused", "route", route, "remote", r.RemoteAddr, "path", r.URL.Path, "status", rec.status, "reason", reason, "error", err.Error())
		}
		requestsTotal.WithLabelValues(strconv.Itoa(rec.status), reason).Inc()
		requestDuration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// serveRecovered runs h, turning a panic into an internal error: the
// caller gets a 500 and the process keeps serving the other pods.
func serveRecovered(w http.ResponseWriter, r *http.Request, h handlerFunc) (reason string, err error) {
	defer func() {
		if p := recover(); p != nil {
			panicsTotal.Inc()
			reason, err = "", fmt.Errorf("panic serving %s: %v", r.URL.Path, p)
		}
	}()
	return h(w, r)
}

func (s *Server) proxy(w http.ResponseWriter, r *http.Request) (string, error) {
	s.passthrough.ServeHTTP(w, r)
	return "passthrough", nil
}

// other answers paths outside the allowlist: only exception pods get them,
// as far as their policy goes.
func (s *Server) other(w http.ResponseWriter, r *http.Request) (string, error) {
	if exempt, err := s.exemptCaller(r); err != nil || !exempt || !s.exceptions.pathAllowed(s, r.URL.Path) {
		return "", forbidden("path_not_allowed", "Path %s is not served to pods; allowed: the token endpoint, %s (configuration nmi.allowedMetadataPaths)", r.URL.Path, strings.Join(s.allowedPaths, ", "))
	}
	return s.proxy(w, r)
}

// callerPollInterval paces the lookups of an unknown caller.
const callerPollInterval = 100 * time.Millisecond

// caller finds the pod calling from ip. A container may call as soon as it
// starts, before the kubelet's status update with its IP reaches this
// node's cache, so an unknown IP, or one a newer pod may have taken over, is
// looked up again for up to callerWait before it is refused.
func (s *Server) caller(ctx context.Context, ip string) (*corev1.Pod, error) {
	deadline := time.Now().Add(s.callerWait)
	turn := s.waits.turn()
	defer turn.done()
	for {
		pod, err := s.lookup(ctx, ip)
		var apiErr *apiError
		transient := errors.As(err, &apiErr) && (apiErr.reason == reasonUnknownCaller || apiErr.reason == reasonIPMayBeReused || apiErr.reason == reasonNotConfirmed)
		if err == nil || !transient || !time.Now().Before(deadline) {
			return pod, err
		}
		if err := turn.pause(ctx, err); err != nil {
			return nil, err
		}
	}
}

// lookup is one attempt at finding the caller. With the container
// runtime's socket the runtime is authoritative: it confirms the pod the
// cache names, finds the pod of an IP the kubelet has not reported yet, and
// the guess about newer pods (ipMayBeReused) does not apply.
func (s *Server) lookup(ctx context.Context, ip string) (*corev1.Pod, error) {
	pod, err := callerPod(ctx, s.reader, ip)
	var apiErr *apiError
	switch {
	case s.runtime == nil && err == nil:
		err = ipMayBeReused(ctx, s.reader, pod, ip, time.Now())
	case s.runtime == nil:
	case err == nil:
		err = s.runtime.confirm(ctx, pod, ip)
	case errors.As(err, &apiErr) && apiErr.reason == reasonUnknownCaller:
		if owner, rerr := s.runtime.ownerWithoutIP(ctx, s.reader, ip); owner != nil || rerr != nil {
			return owner, rerr
		}
	}
	if err != nil {
		return nil, err
	}
	return pod, nil
}

// exemptCaller reports whether the caller matches an AzurePodIdentityException.
func (s *Server) exemptCaller(r *http.Request) (bool, error) {
	pod, err := s.caller(r.Context(), remoteIP(r))
	if err != nil {
		return false, err
	}
	return s.exceptions.isException(r.Context(), s.reader, pod)
}

// token serves a token request the policy lets through.
func (s *Server) token(w http.ResponseWriter, r *http.Request, policy tokenPolicy) (string, error) {
	ctx := r.Context()
	c := &tokenCall{ip: remoteIP(r), header: r.Header, query: r.URL.Query()}
	if err := policy.decide(ctx, c); err != nil {
		return "", err
	}
	if c.exempt {
		if c.passthrough != nil {
			r = asJudged(r, c.passthrough)
		}
		return s.proxy(w, r)
	}
	tok, err := s.identityToken(ctx, c)
	if err != nil && c.explain != nil {
		err = c.explain(ctx, c.pod, c.id, err)
	}
	if err != nil {
		return "", err
	}
	writeJSON(w, http.StatusOK, tok)
	s.log.V(1).Info("token served", "pod", c.ent.pod.String(), "identity", c.id.Namespace+"/"+c.id.Name, "clientID", c.id.Spec.ClientID, "resource", c.req.Resource)
	return "ok", nil
}

func (s *Server) identityToken(ctx context.Context, c *tokenCall) (Token, error) {
	id, resource := c.id, c.req.Resource
	name := id.Namespace + "/" + id.Name
	var fetch func(context.Context) (Token, error)
	var secret *corev1.Secret // a service principal's
	key := ""
	switch {
	case c.federated:
		key = s.federation.key(c.pod, id, resource)
		fetch = func(ctx context.Context) (Token, error) { return s.federation.token(ctx, c.pod, id, resource) }
	case id.Spec.Type == aadv1.UserAssignedMSI:
		fetch = func(ctx context.Context) (Token, error) {
			tok, err := s.imds.token(ctx, id.Spec.ClientID, resource)
			if err == nil && c.verify != nil {
				err = c.verify(tok, id) // before the token is cached
			}
			return tok, err
		}
	case s.sp == nil:
		return Token{}, forbidden("service_principals_disabled", "AzureIdentity %s is a service principal (type %d); NMI serves those only with nmi.enableServicePrincipals: true", name, id.Spec.Type)
	default:
		var err error
		if secret, err = s.sp.secret(ctx, id); err != nil {
			return Token{}, err
		}
		fetch = func(ctx context.Context) (Token, error) { return s.sp.token(ctx, id, secret, resource) }
	}
	if key == "" {
		key = tokenKey(id, secret, resource)
	}
	tok, hit, err := s.tokens.get(ctx, key, func() error { return s.misses.admit(c.pod.UID) }, fetch)
	if hit {
		tokenCacheTotal.WithLabelValues("hit").Inc()
	} else {
		tokenCacheTotal.WithLabelValues("miss").Inc()
	}
	return tok, err
}

// asJudged is the token request r as NMI judged it: the canonical token
// path, query q and no body.
func asJudged(r *http.Request, q url.Values) *http.Request {
	out := r.Clone(r.Context())
	out.URL.Path, out.URL.RawPath, out.URL.RawQuery = imdsTokenPath, "", q.Encode()
	out.Body, out.ContentLength = http.NoBody, 0
	return out
}

func remoteIP(r *http.Request) string { return remoteHost(r.RemoteAddr) }
