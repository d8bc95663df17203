package metricsserver

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-logr/logr"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeAPI answers reviews from its tables and counts them.
type fakeAPI struct {
	users   map[string]string // token → user name
	allowed map[string]bool   // user name → may get /metrics
	err     error
	calls   int
}

func (f *fakeAPI) tokens() tokenReviews  { return tokenFunc(f.reviewToken) }
func (f *fakeAPI) access() accessReviews { return accessFunc(f.reviewAccess) }

func (f *fakeAPI) reviewToken(_ context.Context, tr *authnv1.TokenReview, _ metav1.CreateOptions) (*authnv1.TokenReview, error) {
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	name, ok := f.users[tr.Spec.Token]
	tr.Status = authnv1.TokenReviewStatus{Authenticated: ok, User: authnv1.UserInfo{Username: name, Extra: map[string]authnv1.ExtraValue{"k": {"v"}}}}
	return tr, nil
}

func (f *fakeAPI) reviewAccess(_ context.Context, sar *authzv1.SubjectAccessReview, _ metav1.CreateOptions) (*authzv1.SubjectAccessReview, error) {
	a := sar.Spec.NonResourceAttributes
	sar.Status.Allowed = f.allowed[sar.Spec.User] && a.Verb == "get" && a.Path == Path && sar.Spec.Extra["k"][0] == "v"
	return sar, nil
}

type tokenFunc func(context.Context, *authnv1.TokenReview, metav1.CreateOptions) (*authnv1.TokenReview, error)

func (f tokenFunc) Create(ctx context.Context, tr *authnv1.TokenReview, o metav1.CreateOptions) (*authnv1.TokenReview, error) {
	return f(ctx, tr, o)
}

type accessFunc func(context.Context, *authzv1.SubjectAccessReview, metav1.CreateOptions) (*authzv1.SubjectAccessReview, error)

func (f accessFunc) Create(ctx context.Context, sar *authzv1.SubjectAccessReview, o metav1.CreateOptions) (*authzv1.SubjectAccessReview, error) {
	return f(ctx, sar, o)
}

func TestReviewer(t *testing.T) {
	for _, tc := range []struct {
		name, method, auth string
		err                error
		want               int
		reviews            int // of two identical requests
	}{
		{name: "no token", method: http.MethodGet, want: http.StatusUnauthorized},
		{name: "not a bearer token", method: http.MethodGet, auth: "Basic c2NyYXBlcg==", want: http.StatusUnauthorized},
		{name: "unknown token", method: http.MethodGet, auth: "Bearer nobody", want: http.StatusUnauthorized, reviews: 1},
		{name: "authenticated, not authorized", method: http.MethodGet, auth: "Bearer outsider", want: http.StatusForbidden, reviews: 1},
		{name: "authorized", method: http.MethodGet, auth: "bearer  scraper", want: http.StatusOK, reviews: 1},
		{name: "authorized for get only", method: http.MethodPost, auth: "Bearer scraper", want: http.StatusForbidden, reviews: 1},
		{name: "apiserver error, not kept", method: http.MethodGet, auth: "Bearer scraper", err: errors.New("unavailable"), want: http.StatusInternalServerError, reviews: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeAPI{users: map[string]string{"scraper": "sa:scraper", "outsider": "sa:outsider"}, allowed: map[string]bool{"sa:scraper": true}, err: tc.err}
			h := newReviewer(api.tokens(), api.access(), logr.Discard()).wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusOK)
			}))
			for range 2 {
				req := httptest.NewRequest(tc.method, Path, nil)
				if tc.auth != "" {
					req.Header.Set("Authorization", tc.auth)
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != tc.want {
					t.Errorf("status %d, want %d (%s)", rec.Code, tc.want, rec.Body)
				}
			}
			if api.calls != tc.reviews {
				t.Errorf("%d token reviews for two requests, want %d", api.calls, tc.reviews)
			}
		})
	}
}
