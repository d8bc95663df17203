package metricsserver

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
)

// How long a decision is reused, as the manager's filters do (their
// authentication cache keeps a minute, their authorization cache a denial
// 30 seconds): a scraper asks every few seconds, and each decision costs
// two requests to the apiserver.
const (
	allowedTTL   = time.Minute
	deniedTTL    = 30 * time.Second
	maxDecisions = 1024
)

type tokenReviews interface {
	Create(context.Context, *authnv1.TokenReview, metav1.CreateOptions) (*authnv1.TokenReview, error)
}

type accessReviews interface {
	Create(context.Context, *authzv1.SubjectAccessReview, metav1.CreateOptions) (*authzv1.SubjectAccessReview, error)
}

// reviewer lets through the requests of callers the apiserver authenticates
// (TokenReview of their bearer token) and authorizes for the request's verb
// on its path (SubjectAccessReview).
type reviewer struct {
	tokens    tokenReviews
	access    accessReviews
	decisions *cache.LRUExpireCache // decisionKey → decision
	log       logr.Logger
}

// decision is a review's answer: the status to refuse with (0: allowed) and
// its message.
type decision struct {
	status int
	msg    string
}

func newReviewer(tokens tokenReviews, access accessReviews, log logr.Logger) *reviewer {
	return &reviewer{tokens: tokens, access: access, decisions: cache.NewLRUExpireCache(maxDecisions), log: log}
}

func (r *reviewer) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		d, err := r.decide(req.Context(), bearerToken(req), strings.ToLower(req.Method), req.URL.Path)
		if err != nil {
			r.log.Error(err, "reviewing a metrics request", "path", req.URL.Path)
			http.Error(w, "Authentication or authorization failed", http.StatusInternalServerError)
			return
		}
		if d.status != 0 {
			r.log.V(4).Info("metrics request refused", "path", req.URL.Path, "status", d.status, "reason", d.msg)
			http.Error(w, d.msg, d.status)
			return
		}
		next.ServeHTTP(w, req)
	})
}

// decide answers from a recent decision for the same token, verb and path,
// or asks the apiserver; errors are not kept.
func (r *reviewer) decide(ctx context.Context, token, verb, path string) (decision, error) {
	if token == "" {
		return decision{status: http.StatusUnauthorized, msg: "Unauthorized"}, nil
	}
	key := decisionKey(token, verb, path)
	if d, ok := r.decisions.Get(key); ok {
		return d.(decision), nil
	}
	d, err := r.review(ctx, token, verb, path)
	if err != nil {
		return decision{}, err
	}
	ttl := allowedTTL
	if d.status != 0 {
		ttl = deniedTTL
	}
	r.decisions.Add(key, d, ttl)
	return d, nil
}

func (r *reviewer) review(ctx context.Context, token, verb, path string) (decision, error) {
	tr, err := r.tokens.Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return decision{}, fmt.Errorf("creating TokenReview: %w", err)
	}
	if !tr.Status.Authenticated {
		return decision{status: http.StatusUnauthorized, msg: "Unauthorized"}, nil
	}
	u := tr.Status.User
	sar, err := r.access.Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra(u.Extra),
		NonResourceAttributes: &authzv1.NonResourceAttributes{Path: path, Verb: verb},
	}}, metav1.CreateOptions{})
	if err != nil {
		return decision{}, fmt.Errorf("creating SubjectAccessReview for user %s: %w", u.Username, err)
	}
	if !sar.Status.Allowed || sar.Status.Denied {
		return decision{status: http.StatusForbidden, msg: "Authorization denied for user " + u.Username}, nil
	}
	return decision{}, nil
}

// bearerToken is the request's bearer token, or "".
func bearerToken(req *http.Request) string {
	scheme, token, ok := strings.Cut(strings.TrimSpace(req.Header.Get("Authorization")), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// decisionKey keeps a digest of the token, not the token, in memory.
func decisionKey(token, verb, path string) string {
	return fmt.Sprintf("%x %s %s", sha256.Sum256([]byte(token)), verb, path)
}

func extra(in map[string]authnv1.ExtraValue) map[string]authzv1.ExtraValue {
	if in == nil {
		return nil
	}
	out := make(map[string]authzv1.ExtraValue, len(in))
	for k, v := range in {
		out[k] = authzv1.ExtraValue(v)
	}
	return out
}
