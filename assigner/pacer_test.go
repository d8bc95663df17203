package assigner

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

var (
	t0       = time.Unix(1000, 0)
	testPool = nodepool.Pool{Subscription: "s", ResourceGroup: "rg", Kind: nodepool.KindVMSS, Name: "p"}
)

func TestPacerBatchWait(t *testing.T) {
	const ms = time.Millisecond
	clk := clocktesting.NewFakeClock(t0)
	p := newPacer(clk, time.Second, time.Hour) // quiet period 200ms
	steps := []struct {
		name       string
		at         time.Duration
		unrecorded int
		unseen     bool
		want       time.Duration
	}{
		{name: "first new identity: wait for a quiet period", at: 0, unrecorded: 1, want: 200 * ms},
		{name: "same identities: the quiet period runs on", at: 50 * ms, unrecorded: 1, want: 150 * ms},
		{name: "another identity restarts the quiet period", at: 100 * ms, unrecorded: 2, want: 200 * ms},
		{name: "quiet period over: write", at: 300 * ms, unrecorded: 2, want: 0},
		{name: "next new identity opens a new window", at: 2 * time.Second, unrecorded: 1, want: 200 * ms},
		{name: "new identities keep coming", at: 2150 * ms, unrecorded: 2, want: 200 * ms},
		{name: "still coming", at: 2300 * ms, unrecorded: 1, want: 200 * ms},
		{name: "the window caps the wait", at: 2850 * ms, unrecorded: 2, want: 150 * ms},
		{name: "window over: write", at: 3 * time.Second, unrecorded: 2, want: 0},
		{name: "nothing new: write at once (drift, removals)", at: 3500 * ms, unrecorded: 0, want: 0},
		{name: "a pod not handled yet carries an unknown identity: wait for the window", at: 4 * time.Second, unrecorded: 1, unseen: true, want: time.Second},
		{name: "still unseen after the quiet period", at: 4300 * ms, unrecorded: 1, unseen: true, want: 700 * ms},
		{name: "seen: the quiet period is over, write", at: 4400 * ms, unrecorded: 1, want: 0},
	}
	for _, s := range steps {
		clk.SetTime(t0.Add(s.at))
		if got := p.batchWait(testPool.Key(), s.unrecorded, s.unseen); got != s.want {
			t.Errorf("%s: wait %s, want %s", s.name, got, s.want)
		}
	}
	p.batch = 0
	if got := p.batchWait(testPool.Key(), 1, true); got != 0 {
		t.Errorf("no window: wait %s", got)
	}
}

// A pool read less than a drift period ago is settled: no ARM read until
// the period is over.
func TestPacerUntilDriftCheck(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	p := newPacer(clk, 0, 3*time.Minute)
	key := testPool.Key()
	if _, ok := p.untilDriftCheck(key); ok {
		t.Fatal("a pool never read is settled")
	}
	p.poolRead(key)
	steps := []struct {
		at     time.Duration
		want   time.Duration
		wantOK bool
	}{
		{at: 0, want: 3 * time.Minute, wantOK: true},
		{at: time.Minute, want: 2 * time.Minute, wantOK: true},
		{at: 3 * time.Minute, want: 0, wantOK: false},
		{at: 4 * time.Minute, want: -time.Minute, wantOK: false},
	}
	for _, s := range steps {
		clk.SetTime(t0.Add(s.at))
		if got, ok := p.untilDriftCheck(key); got != s.want || ok != s.wantOK {
			t.Errorf("at %s: %s, %v; want %s, %v", s.at, got, ok, s.want, s.wantOK)
		}
	}
	p.poolRead(key)
	if got, ok := p.untilDriftCheck(key); !ok || got != 3*time.Minute {
		t.Errorf("after a new read: %s, %v", got, ok)
	}
	if _, ok := p.untilDriftCheck(nodepool.Pool{Subscription: "s", ResourceGroup: "rg", Kind: nodepool.KindVMSS, Name: "other"}.Key()); ok {
		t.Error("another pool counts as read")
	}
}

// Failed records are retried once per drift period, the first period
// starting at the pool's first round.
func TestPacerRetryFailedDue(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	p := newPacer(clk, 0, 3*time.Minute)
	steps := []struct {
		at   time.Duration
		want bool
	}{
		{at: 0, want: false},
		{at: time.Minute, want: false},
		{at: 3 * time.Minute, want: true},
		{at: 3*time.Minute + time.Second, want: false},
		{at: 5 * time.Minute, want: false},
		{at: 7 * time.Minute, want: true},
	}
	for _, s := range steps {
		clk.SetTime(t0.Add(s.at))
		if got := p.retryFailedDue(testPool.Key()); got != s.want {
			t.Errorf("at %s: due %v, want %v", s.at, got, s.want)
		}
	}
}

// Pod counts are rewritten at once the first time, then at most every
// countInterval per pool.
func TestPacerCountsDue(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	p := newPacer(clk, 0, 3*time.Minute)
	steps := []struct {
		at, want time.Duration
	}{
		{at: 0, want: 0},
		{at: time.Second, want: countInterval - time.Second},
		{at: countInterval - time.Millisecond, want: time.Millisecond},
		{at: countInterval, want: 0},
		{at: countInterval + time.Second, want: countInterval - time.Second},
	}
	for _, s := range steps {
		clk.SetTime(t0.Add(s.at))
		if got := p.countsDue(testPool.Key()); got != s.want {
			t.Errorf("at %s: due in %s, want %s", s.at, got, s.want)
		}
	}
	if got := p.countsDue("other-pool"); got != 0 {
		t.Errorf("another pool waits %s for its first counts", got)
	}
}

// Transient failures back off per pool, doubling from baseBackoff with up to
// 50% jitter, capped at the drift period; a success starts over.
func TestPacerBackoff(t *testing.T) {
	const drift = 10 * time.Second
	p := newPacer(clocktesting.NewFakeClock(t0), 0, drift)
	other := nodepool.Pool{Subscription: "s", ResourceGroup: "rg", Kind: nodepool.KindVMSS, Name: "other"}
	transient := errors.New("connection reset")
	for i, base := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, drift, drift} {
		wait, throttled := p.armFailed(testPool, transient)
		if throttled || wait < base || wait > base*3/2 {
			t.Errorf("failure %d: wait %s (throttled %v), want %s to %s", i+1, wait, throttled, base, base*3/2)
		}
	}
	if wait, _ := p.armFailed(other, transient); wait > 750*time.Millisecond {
		t.Errorf("another pool's first failure waits %s", wait)
	}
	if wait := p.throttled(testPool.Subscription); wait > 0 {
		t.Errorf("transient failures throttle the subscription for %s", wait)
	}
	p.armSucceeded(testPool.Key())
	if wait, _ := p.armFailed(testPool, transient); wait > 750*time.Millisecond {
		t.Errorf("first failure after a success waits %s", wait)
	}
}

// A 429 pauses every pool of its subscription for Retry-After (seconds, an
// HTTP date, or a minute without one); a shorter one does not cut a pause.
func TestPacerRetryAfter(t *testing.T) {
	tests := []struct {
		name       string
		retryAfter string
		want       time.Duration
	}{
		{name: "seconds", retryAfter: "2", want: 2 * time.Second},
		{name: "HTTP date", retryAfter: t0.Add(10 * time.Second).UTC().Format(http.TimeFormat), want: 10 * time.Second},
		{name: "HTTP date past", retryAfter: t0.Add(-time.Minute).UTC().Format(http.TimeFormat), want: 0},
		{name: "absent", want: time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(t0)
			p := newPacer(clk, 0, time.Hour)
			wait, throttled := p.armFailed(testPool, tooManyRequests(tc.retryAfter))
			if !throttled || wait != tc.want {
				t.Fatalf("wait %s, throttled %v; want %s", wait, throttled, tc.want)
			}
			if got := p.throttled(testPool.Subscription); got != tc.want {
				t.Errorf("subscription paused for %s, want %s", got, tc.want)
			}
			if got := p.throttled("other"); got > 0 {
				t.Errorf("another subscription paused for %s", got)
			}
			clk.Step(tc.want)
			if got := p.throttled(testPool.Subscription); got > 0 {
				t.Errorf("still paused for %s after Retry-After", got)
			}
		})
	}
	t.Run("a shorter pause does not cut a longer one", func(t *testing.T) {
		clk := clocktesting.NewFakeClock(t0)
		p := newPacer(clk, 0, time.Hour)
		p.armFailed(testPool, tooManyRequests("30"))
		p.armFailed(nodepool.Pool{Subscription: "s", ResourceGroup: "rg", Kind: nodepool.KindVM, Name: "vm"}, tooManyRequests("5"))
		if got := p.throttled(testPool.Subscription); got != 30*time.Second {
			t.Errorf("paused for %s, want 30s", got)
		}
	})
}

// tooManyRequests is the error azcore returns for an ARM 429.
func tooManyRequests(retryAfter string) error {
	return armError(http.StatusTooManyRequests, map[string]string{"Retry-After": retryAfter}, "TooManyRequests", "throttled")
}

// armError is the error azcore returns for an ARM answer with status,
// headers and the error code and message in its body.
func armError(status int, headers map[string]string, code, message string) error {
	req := httptest.NewRequest(http.MethodPatch, "https://management.azure.com"+testPool.ID(), nil)
	resp := &http.Response{
		StatusCode: status, Status: http.StatusText(status), Header: http.Header{}, Request: req,
		Body: io.NopCloser(strings.NewReader(fmt.Sprintf(`{"error": {"code": %q, "message": %q}}`, code, message))),
	}
	for k, v := range headers {
		if v != "" {
			resp.Header.Set(k, v)
		}
	}
	return runtime.NewResponseError(resp)
}

// A pool gives way once per burst: the round after sends everything, and a
// later burst gives way again.
func TestPacerYieldsOncePerBurst(t *testing.T) {
	p := newPacer(clocktesting.NewFakeClock(t0), 0, time.Hour)
	for i, tc := range []struct {
		requests int
		want     bool
	}{{1, false}, {3, true}, {2, false}, {3, true}, {1, false}, {2, true}} {
		if got := p.yield("pool", tc.requests); got != tc.want {
			t.Errorf("round %d, %d requests: yield %v, want %v", i, tc.requests, got, tc.want)
		}
	}
}
