package nmi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
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

// Requests waiting for the cache are capped node-wide: 600 unknown callers
// from 10 addresses (under the per-address cap) leave 200 waiting and get
// the rest 503 with Retry-After at once, so the cost of waiting requests is
// bounded whatever the number of addresses.
func TestWaitingRequestsAreCapped(t *testing.T) {
	const (
		addrs, perAddr = 10, 60
		maxWaiting     = 200
		total          = addrs * perAddr
	)
	f := newFixture(t)
	f.server.callerWait = time.Minute
	f.server.waits = newWaitLimit(maxWaiting)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveOn(ctx, l, 64, f.server.Handler()) }()
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	goroutines, mem := usage()
	refusedBefore := testutil.ToFloat64(waitsRefused)
	for a := range addrs {
		from := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(a+1))}
		for range perAddr {
			c, err := (&net.Dialer{LocalAddr: from, Timeout: 5 * time.Second}).Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			if _, err := fmt.Fprint(c, "GET /metadata/identity/oauth2/token?api-version=1&resource=r HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(waitsRefused)-refusedBefore < total-maxWaiting && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(waitsRefused) - refusedBefore; got != total-maxWaiting {
		t.Fatalf("%v requests refused at once, want %d", got, total-maxWaiting)
	}
	if got := testutil.ToFloat64(waitingRequests); got != maxWaiting {
		t.Fatalf("%v requests waiting, want %d", got, maxWaiting)
	}
	// The refused ones are answered at once (read all together, each with a
	// second to arrive under a loaded -race run); the waiting get nothing
	// within the minute they wait.
	answered := make([]*http.Response, len(conns))
	var reads sync.WaitGroup
	for i, c := range conns {
		reads.Go(func() {
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
				_ = resp.Body.Close()
				answered[i] = resp
			}
		})
	}
	reads.Wait()
	var waiting []net.Conn
	for i, resp := range answered {
		if resp == nil {
			waiting = append(waiting, conns[i])
			continue
		}
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("refused request: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		_ = conns[i].Close()
	}
	if len(waiting) != maxWaiting {
		t.Fatalf("%d connections without an answer, want %d", len(waiting), maxWaiting)
	}
	g, m := usage()
	t.Logf("%d requests waiting: %.1f goroutines and %.1f KiB (heap and stacks) each", maxWaiting, float64(g-goroutines)/maxWaiting, float64(m-mem)/maxWaiting/1024)
	if g-goroutines > 3*maxWaiting {
		t.Errorf("%d more goroutines for %d waiting requests", g-goroutines, maxWaiting)
	}
}

// usage is the process's goroutines and in-use heap and stack bytes.
func usage() (goroutines int, bytes uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapInuse + ms.StackInuse
}
