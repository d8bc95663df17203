package nmi

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestTokenCache(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	c := newTokenCache(5*time.Minute, 0)
	c.now = func() time.Time { return now }
	var fetches atomic.Int32
	fetch := func(context.Context) (Token, error) {
		fetches.Add(1)
		return Token{AccessToken: "t", ExpiresOn: strconv.FormatInt(now.Add(time.Hour).Unix(), 10)}, nil
	}
	ctx := context.Background()
	steps := []struct {
		advance   time.Duration
		key       string
		hit       bool
		expiresIn string
	}{
		{0, "a", false, "3600"},
		{10 * time.Minute, "a", true, "3000"},
		{0, "b", false, "3600"},
		{44 * time.Minute, "a", true, "360"},  // 6 min left: still served
		{2 * time.Minute, "a", false, "3600"}, // 4 min left: renewed (fetch uses the new now)
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		tok, hit, err := c.get(ctx, s.key, admitAll, fetch)
		if err != nil || hit != s.hit || tok.ExpiresIn != s.expiresIn {
			t.Fatalf("step %d: got %+v hit=%v err=%v; want hit=%v expires_in=%s", i, tok, hit, err, s.hit, s.expiresIn)
		}
	}
	if got := fetches.Load(); got != 3 {
		t.Fatalf("%d fetches, want 3", got)
	}
}

func TestTokenCacheCollapsesMisses(t *testing.T) {
	c := newTokenCache(time.Minute, 0)
	release := make(chan struct{})
	var fetches atomic.Int32
	fetch := func(context.Context) (Token, error) {
		fetches.Add(1)
		<-release
		return Token{AccessToken: "t", ExpiresOn: strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)}, nil
	}
	const callers = 20
	var started, done sync.WaitGroup
	started.Add(callers)
	done.Add(callers)
	errs := make(chan error, callers)
	for range callers {
		go func() {
			defer done.Done()
			started.Done()
			if _, _, err := c.get(context.Background(), "k", admitAll, fetch); err != nil {
				errs <- err
			}
		}()
	}
	started.Wait()
	// Every caller is either waiting on the one fetch or will find its result.
	close(release)
	done.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := fetches.Load(); got != 1 {
		t.Fatalf("%d fetches for %d concurrent callers, want 1", got, callers)
	}
}

func TestTokenCacheErrorsAreNotCached(t *testing.T) {
	c := newTokenCache(time.Minute, 0)
	boom := errors.New("boom")
	if _, _, err := c.get(context.Background(), "k", admitAll, func(context.Context) (Token, error) { return Token{}, boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	tok, hit, err := c.get(context.Background(), "k", admitAll, func(context.Context) (Token, error) {
		return Token{AccessToken: "ok", ExpiresOn: strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)}, nil
	})
	if err != nil || hit || tok.AccessToken != "ok" {
		t.Fatalf("got %+v hit=%v err=%v", tok, hit, err)
	}
}

func admitAll() error { return nil }

func TestTokenCacheFetchPanicIsAnError(t *testing.T) {
	c := newTokenCache(time.Minute, 0)
	before := testutil.ToFloat64(panicsTotal)
	_, _, err := c.get(context.Background(), "k", admitAll, func(context.Context) (Token, error) { panic("bad upstream answer") })
	if err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("got %v, want the panic as an error", err)
	}
	if got := testutil.ToFloat64(panicsTotal) - before; got != 1 {
		t.Errorf("panics counted: %v, want 1", got)
	}
}

func TestTokenCacheFetchHasDeadline(t *testing.T) {
	c := newTokenCache(time.Minute, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the caller has gone: the shared fetch still runs, bounded
	var deadline time.Time
	var ok bool
	_, _, _ = c.get(context.Background(), "k", admitAll, func(fctx context.Context) (Token, error) {
		deadline, ok = fctx.Deadline()
		return Token{}, ctx.Err()
	})
	if !ok || time.Until(deadline) > fetchDeadline {
		t.Fatalf("fetch deadline %v (set %v), want within %v", deadline, ok, fetchDeadline)
	}
}

func TestTokenCacheRefusedMissFetchesNothing(t *testing.T) {
	c := newTokenCache(time.Minute, 0)
	limited := errors.New("limited")
	_, _, err := c.get(context.Background(), "k", func() error { return limited }, func(context.Context) (Token, error) {
		t.Fatal("fetched although the miss was refused")
		return Token{}, nil
	})
	if !errors.Is(err, limited) {
		t.Fatalf("got %v", err)
	}
}

// The cache holds at most its size: the least recently used token goes
// first, counted in nmi_token_cache_evictions_total.
func TestTokenCacheIsBounded(t *testing.T) {
	c := newTokenCache(time.Minute, 3)
	tok := Token{AccessToken: "t", ExpiresOn: strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)}
	before := testutil.ToFloat64(tokenCacheEvictions)
	for _, k := range []string{"a", "b", "c"} {
		c.store(k, tok)
	}
	if _, ok := c.lookup("a"); !ok {
		t.Fatal("a not cached")
	}
	c.store("d", tok) // b is now the least recently used
	for k, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		if _, ok := c.lookup(k); ok != want {
			t.Errorf("%s cached: %t, want %t", k, ok, want)
		}
	}
	if n := c.tokens.Len(); n != 3 {
		t.Errorf("cache holds %d tokens, want 3", n)
	}
	if got := testutil.ToFloat64(tokenCacheEvictions) - before; got != 1 {
		t.Errorf("evictions counted: %v, want 1", got)
	}
	if got := testutil.ToFloat64(tokenCacheEntries); got != 3 {
		t.Errorf("nmi_token_cache_entries = %v, want 3", got)
	}
}
