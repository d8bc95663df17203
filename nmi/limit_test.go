package nmi

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestMissLimiter(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := newMissLimiter(2, 3)
	l.now = func() time.Time { return now }
	steps := []struct {
		name      string
		advance   time.Duration
		pod       types.UID
		wantRetry time.Duration // 0: admitted
	}{
		{"burst 1", 0, "a", 0},
		{"burst 2", 0, "a", 0},
		{"burst 3", 0, "a", 0},
		{"over the burst: retry when a token is back", 0, "a", 500 * time.Millisecond},
		{"another pod has its own bucket", 0, "b", 0},
		{"a token back after 1/rate", 500 * time.Millisecond, "a", 0},
		{"and spent again", 0, "a", 500 * time.Millisecond},
	}
	for _, s := range steps {
		now = now.Add(s.advance)
		err := l.admit(s.pod)
		var ae *apiError
		switch {
		case s.wantRetry == 0 && err != nil:
			t.Errorf("%s: refused: %v", s.name, err)
		case s.wantRetry > 0 && (!errors.As(err, &ae) || ae.status != http.StatusTooManyRequests || ae.retryAfter != s.wantRetry):
			t.Errorf("%s: got %v, want 429 retry after %v", s.name, err, s.wantRetry)
		}
	}
	// A pod idle long enough to have a full bucket is forgotten.
	now = now.Add(time.Hour)
	_ = l.admit("c")
	if _, ok := l.pods["a"]; ok || len(l.pods) != 1 {
		t.Errorf("limiters kept for %d pods (a kept: %v), want only c", len(l.pods), ok)
	}
}

func TestMissLimiterDisabled(t *testing.T) {
	l := newMissLimiter(0, 0)
	for i := range 1000 {
		if err := l.admit("a"); err != nil {
			t.Fatalf("request %d refused with the limit disabled: %v", i, err)
		}
	}
}
