//go:build e2e

package nmi_test

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// legacyComment marks the jump aad-pod-identity 1.x puts in PREROUTING.
const legacyComment = "AAD Pod Identity"

// installLegacyNMI sets up the node as aad-pod-identity 1.x's NMI leaves
// it: the aad-metadata chain DNATing to the node's address, its own calls
// let through, a commented jump, and a listener there that refuses every
// request (it stands for the old NMI).
func installLegacyNMI(t *testing.T) {
	t.Helper()
	for _, args := range [][]string{
		{"-N", Chain},
		{"-A", Chain, "!", "-s", nodeIP + "/32", "-d", metadataIP + "/32", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", nodeIP + ":2579"},
		{"-A", Chain, "-s", nodeIP + "/32", "-d", metadataIP + "/32", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "ACCEPT"},
		{"-A", Chain, "-j", "RETURN"},
		{"-I", "PREROUTING", "1", "-m", "comment", "--comment", legacyComment, "-j", Chain},
	} {
		run(t, "iptables", append([]string{"-t", "nat"}, args...)...)
	}
	l, err := net.Listen("tcp", nodeIP+":2579")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"error":"forbidden","error_description":"the earlier NMI"}`))
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// poll has p ask for a token, each time on a new connection (DNAT is
// decided per connection), as fast as it is answered, until the returned
// function is called; that returns how many requests were made.
func poll(p pod) (stop func() int) {
	var (
		done  atomic.Bool
		count atomic.Int64
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: dialIn(p.netns)}}
		for !done.Load() {
			_, _, _ = getWith(client, tokenURL)
			count.Add(1)
		}
	}()
	return func() int {
		done.Store(true)
		wg.Wait()
		return int(count.Load())
	}
}

// stopPollingAfter lets the poller run for d more, then stops it.
func stopPollingAfter(stop func() int, d time.Duration) int {
	time.Sleep(d)
	return stop()
}
