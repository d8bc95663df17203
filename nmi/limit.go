package nmi

import (
	"context"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
)

// missLimiter limits, per pod, the token requests that miss the cache and
// so reach IMDS or Azure AD: IMDS throttles per VM, so one pod asking for
// fresh tokens in a loop would otherwise get every pod on the node
// throttled. Hits are never limited.
type missLimiter struct {
	limit rate.Limit
	burst int
	now   func() time.Time

	mu        sync.Mutex
	pods      map[types.UID]*rate.Limiter
	nextSweep time.Time
}

// newMissLimiter allows perSecond uncached requests per pod, in bursts of
// burst; perSecond <= 0 allows any number.
func newMissLimiter(perSecond float64, burst int) *missLimiter {
	l := &missLimiter{limit: rate.Limit(perSecond), burst: max(burst, 1), now: time.Now, pods: map[types.UID]*rate.Limiter{}}
	if perSecond <= 0 {
		l.limit = rate.Inf
	}
	return l
}

// admit returns nil when the pod may cause one more upstream fetch, or a
// 429 telling it when to retry.
func (l *missLimiter) admit(pod types.UID) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.sweep(now)
	lim, ok := l.pods[pod]
	if !ok {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.pods[pod] = lim
	}
	r := lim.ReserveN(now, 1)
	if delay := r.DelayFrom(now); delay > 0 {
		r.CancelAt(now)
		e := newError(http.StatusTooManyRequests, "too_many_requests", "rate_limited",
			"This pod asked for too many tokens that were not cached (over %v per second); retry later", float64(l.limit))
		e.retryAfter = delay
		return e
	}
	return nil
}

// sweep forgets pods whose bucket is full again: they are indistinguishable
// from new ones, and the map must not grow with every pod the node ever ran.
func (l *missLimiter) sweep(now time.Time) {
	if now.Before(l.nextSweep) {
		return
	}
	l.nextSweep = now.Add(time.Minute)
	for uid, lim := range l.pods {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.pods, uid)
		}
	}
}

// waitLimit caps the requests that wait at once, on this node, for NMI's
// cache to catch up (an unknown caller's IP, a newer pod's, the assigner's
// record): each holds a connection, two goroutines and about 60 KiB of
// heap and stacks (TestWaitingRequestsAreCapped) for up to
// nmi.unknownCallerWait, and the per-address connection cap does not bound
// how many addresses wait.
type waitLimit struct {
	slots chan struct{} // nil: no cap
}

// newWaitLimit allows max requests to wait at once; max <= 0 allows any
// number.
func newWaitLimit(max int) *waitLimit {
	if max <= 0 {
		return &waitLimit{}
	}
	return &waitLimit{slots: make(chan struct{}, max)}
}

// waitTurn is one request's use of the limit: it takes a slot on its first
// pause and gives it back when done.
type waitTurn struct {
	limit *waitLimit
	held  bool
}

// turn starts a request's use of the limit; a nil limit has no cap.
func (l *waitLimit) turn() *waitTurn { return &waitTurn{limit: l} }

// pause waits one poll interval before the request looks again, and
// returns nil then. It returns pending, the answer the request has so far,
// when the request ends meanwhile, and a 503 when every slot is taken: a
// request that cannot wait is told to retry rather than queued.
func (t *waitTurn) pause(ctx context.Context, pending error) error {
	if !t.held && t.limit != nil && t.limit.slots != nil {
		select {
		case t.limit.slots <- struct{}{}:
			t.held = true
			waitingRequests.Inc()
		default:
			waitsRefused.Inc()
			e := newError(http.StatusServiceUnavailable, "service_unavailable", "too_many_waiting",
				"Too many requests are waiting on this node for NMI's view of its pods to catch up; retry in a moment")
			e.retryAfter = time.Second
			return e
		}
	}
	select {
	case <-ctx.Done():
		return pending
	case <-time.After(callerPollInterval):
		return nil
	}
}

// done gives the request's slot back, if it took one.
func (t *waitTurn) done() {
	if t.held {
		t.held = false
		waitingRequests.Dec()
		<-t.limit.slots
	}
}
