package nmi

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestTokenCache(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	c := newTokenCache(5 * time.Minute)
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
		tok, hit, err := c.get(ctx, s.key, fetch)
		if err != nil || hit != s.hit || tok.ExpiresIn != s.expiresIn {
			t.Fatalf("step %d: got %+v hit=%v err=%v; want hit=%v expires_in=%s", i, tok, hit, err, s.hit, s.expiresIn)
		}
	}
	if got := fetches.Load(); got != 3 {
		t.Fatalf("%d fetches, want 3", got)
	}
}

func TestTokenCacheCollapsesMisses(t *testing.T) {
	c := newTokenCache(time.Minute)
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
			if _, _, err := c.get(context.Background(), "k", fetch); err != nil {
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
	c := newTokenCache(time.Minute)
	boom := errors.New("boom")
	if _, _, err := c.get(context.Background(), "k", func(context.Context) (Token, error) { return Token{}, boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	tok, hit, err := c.get(context.Background(), "k", func(context.Context) (Token, error) {
		return Token{AccessToken: "ok", ExpiresOn: strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)}, nil
	})
	if err != nil || hit || tok.AccessToken != "ok" {
		t.Fatalf("got %+v hit=%v err=%v", tok, hit, err)
	}
}
