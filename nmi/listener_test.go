package nmi

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// One pod holding thousands of idle connections and trickling headers must
// not take the server away from the others.
func TestServerResistsConnectionFloods(t *testing.T) {
	const (
		maxPerIP  = 64
		idle      = 2000
		slowHeads = 40
	)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serveOn(ctx, l, maxPerIP, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	addr := l.Addr().(*net.TCPAddr)
	attacker := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	dial := func(from *net.TCPAddr) net.Conn {
		c, err := (&net.Dialer{LocalAddr: from, Timeout: 5 * time.Second}).Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		return c
	}
	before := testutil.ToFloat64(connectionsRefused)
	for range idle {
		dial(attacker)
	}
	for range slowHeads {
		c := dial(attacker)
		_, _ = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n")
	}
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(connectionsRefused)-before < idle+slowHeads-maxPerIP && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if refused := testutil.ToFloat64(connectionsRefused) - before; refused != idle+slowHeads-maxPerIP {
		t.Fatalf("%v connections refused, want all but %d of %d", refused, maxPerIP, idle+slowHeads)
	}

	// Another pod is served at once.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	start := time.Now()
	resp, err := other.Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatalf("another pod is not served while one floods: %v", err)
	}
	_ = resp.Body.Close()
	t.Logf("another pod served in %v while %d connections from one address were open or refused", time.Since(start), idle+slowHeads)
}
