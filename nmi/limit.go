package nmi

import (
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
