package assigner

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"

	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// countInterval is the shortest time between two rewrites of a pool's
// entries' pod counts when nothing else about them changes: during a burst
// every pod would otherwise rewrite its pool's record.
const countInterval = 10 * time.Second

// baseBackoff is the first delay after a transient ARM failure; it doubles
// with each consecutive failure of the pool, up to the drift period.
const baseBackoff = 500 * time.Millisecond

// pacer is the pool controller's memory of time: batch windows, when pools
// were last read and their Failed entries last retried, consecutive ARM
// failures, and the subscriptions ARM asked us to leave alone. Its time
// comes from the clock it is given, so that pacing can be tested with a
// fake one.
type pacer struct {
	clock clock.PassiveClock
	// batch is how long new work on a pool waits for more pods before the
	// first write, so that a burst fits in one PATCH.
	batch time.Duration
	drift time.Duration

	mu             sync.Mutex
	pools          map[string]*poolPace // by pool key
	throttledUntil map[string]time.Time // by subscription
}

// poolPace is what the pacer remembers of one pool; zero times mean never.
type poolPace struct {
	lastRead  time.Time    // last successful GET
	lastRetry time.Time    // last retry of Failed entries
	lastCount time.Time    // last rewrite of the entries' pod counts
	failures  int          // consecutive transient ARM failures
	newWork   *batchWindow // identities without an entry are waiting
	yielded   bool         // sent the first of several requests and gave way
}

// batchWindow is a pool's pending burst: when its first new identity was
// seen, and when the count of new identities last changed.
type batchWindow struct {
	first, last time.Time
	unrecorded  int
}

func newPacer(c clock.PassiveClock, batch, drift time.Duration) *pacer {
	return &pacer{clock: c, batch: batch, drift: drift, pools: map[string]*poolPace{}, throttledUntil: map[string]time.Time{}}
}

// pool returns the pool's memory; p.mu must be held.
func (p *pacer) pool(key string) *poolPace {
	pp, ok := p.pools[key]
	if !ok {
		pp = &poolPace{}
		p.pools[key] = pp
	}
	return pp
}

// throttled returns how long ARM asked us to make no request to the
// subscription.
func (p *pacer) throttled(subscription string) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.throttledUntil[subscription].Sub(p.clock.Now())
}

// batchWait returns how long to wait before writing. New identities for a
// pool are held until the burst has been seen: no pod the pod controller
// has yet to handle carries an identity the pool does not know (unseen),
// and none has appeared for a fifth of the batch window (pods still on
// their way to the cache). Never longer than the window from when the
// first one was seen. A burst's identities show up within milliseconds of
// each other, so waiting out a fixed window only delayed the PATCH.
func (p *pacer) batchWait(pool string, unrecorded int, unseen bool) time.Duration {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.pool(pool)
	if unrecorded == 0 || p.batch <= 0 {
		pp.newWork = nil
		return 0
	}
	w := pp.newWork
	if w == nil {
		w = &batchWindow{first: now}
	}
	if unrecorded != w.unrecorded {
		w.unrecorded, w.last = unrecorded, now
	}
	end := w.first.Add(p.batch)
	if quiet := w.last.Add(p.batch / 5); !unseen && quiet.Before(end) {
		end = quiet
	}
	if left := end.Sub(now); left > 0 {
		pp.newWork = w
		return left
	}
	pp.newWork = nil
	return 0
}

// untilDriftCheck returns how long until the pool is due to be read again,
// and false if it is due now (or was never read).
func (p *pacer) untilDriftCheck(pool string) (time.Duration, bool) {
	now := p.clock.Now()
	p.mu.Lock()
	last := p.pool(pool).lastRead
	p.mu.Unlock()
	left := last.Add(p.drift).Sub(now)
	return left, !last.IsZero() && left > 0
}

// poolRead notes a successful GET of the pool.
func (p *pacer) poolRead(pool string) {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pool(pool).lastRead = now
}

// countsDue returns how long until the pool's entries' pod counts may be
// rewritten again; 0 means now, and restarts the interval.
func (p *pacer) countsDue(pool string) time.Duration {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.pool(pool)
	if left := pp.lastCount.Add(countInterval).Sub(now); !pp.lastCount.IsZero() && left > 0 {
		return left
	}
	pp.lastCount = now
	return 0
}

// retryFailedDue reports whether a drift period has passed since the
// pool's Failed entries were last retried, and restarts the period if so.
// The first round only starts it: an entry fails in a round, not before.
func (p *pacer) retryFailedDue(pool string) bool {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.pool(pool)
	if !pp.lastRetry.IsZero() && now.Sub(pp.lastRetry) < p.drift {
		return false
	}
	first := pp.lastRetry.IsZero()
	pp.lastRetry = now
	return !first
}

// armFailed returns how long to wait after an ARM error that stopped a
// round, and whether it was a 429: that pauses every request to the
// subscription for its Retry-After. Anything else (5xx, 409, timeouts)
// backs off per pool, exponentially with jitter, up to the drift period.
func (p *pacer) armFailed(pool nodepool.Pool, err error) (time.Duration, bool) {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if d, ok := retryAfter(err, now); ok {
		if until := now.Add(d); until.After(p.throttledUntil[pool.Subscription]) {
			p.throttledUntil[pool.Subscription] = until
		}
		return d, true
	}
	pp := p.pool(pool.Key())
	n := pp.failures
	pp.failures++
	return wait.Jitter(min(time.Duration(1<<min(n, 10))*baseBackoff, p.drift), 0.5), false
}

// armSucceeded ends the pool's backoff.
// yield reports whether a round needing several ARM requests sends only
// its first and gives way to the other pools: once per burst, so that
// every pool's first request, the oldest pods', goes before any pool's
// second, and the rest of a pool's requests go in its next round. One
// round per request would write the pool's record and GET the pool once
// per request, which made a 50-pool burst slower as a whole.
func (p *pacer) yield(pool string, requests int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.pool(pool)
	yield := requests > 1 && !pp.yielded
	pp.yielded = yield
	return yield
}

func (p *pacer) armSucceeded(pool string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pool(pool).failures = 0
}
