package nmi

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Concurrent fetches reuse their connections to IMDS: once the first round
// has opened one per worker, no call opens a new one.
func TestIMDSConnectionsAreReused(t *testing.T) {
	const workers = 32
	var conns, arrived atomic.Int64
	// The first round's calls are all held until every worker has one in
	// flight, so that it opens all the connections later rounds may need.
	allArrived := make(chan struct{})
	imds := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if n := arrived.Add(1); n == workers {
			close(allArrived)
		}
		<-allArrived
		_, _ = w.Write([]byte(`{"access_token":"t","expires_on":"4102444800"}`))
	}))
	imds.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	imds.Start()
	defer imds.Close()
	endpoint, _ := url.Parse(imds.URL)
	c := &imdsClient{endpoint: endpoint, http: &http.Client{Transport: upstreamTransport(workers)}, notFoundRetry: wait.Backoff{Steps: 1}}
	round := func() {
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				if _, err := c.token(context.Background(), "client", "https://vault.azure.net"); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	round()
	opened := conns.Load()
	for range 20 {
		round()
	}
	if more := conns.Load() - opened; more > 0 {
		t.Errorf("%d connections opened after the first round of %d concurrent calls, want 0", more, workers)
	}
}
