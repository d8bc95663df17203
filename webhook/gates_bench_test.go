//go:build integration

package webhook

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// apiLoad counts one client's requests to the API server and the bytes it
// read, by verb.
type apiLoad struct {
	mu       sync.Mutex
	requests map[string]int
	bytes    map[string]int64
}

func (l *apiLoad) wrap(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(req *http.Request) (*http.Response, error) {
			verb := req.Method
			if req.Method == http.MethodGet && req.URL.Query().Get("watch") == "true" {
				verb = "WATCH"
			} else if req.Method == http.MethodGet {
				verb = "GET/LIST"
			}
			resp, err := rt.RoundTrip(req)
			if err == nil {
				resp.Body = &countingBody{ReadCloser: resp.Body, add: func(n int) { l.add(verb, 0, int64(n)) }}
			}
			l.add(verb, 1, 0)
			return resp, err
		})
	}
	return c
}

func (l *apiLoad) add(verb string, requests int, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.requests[verb] += requests
	l.bytes[verb] += bytes
}

func (l *apiLoad) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("requests %v, bytes read %v", l.requests, l.bytes)
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type countingBody struct {
	io.ReadCloser
	add func(int)
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.add(n)
	return n, err
}

// BenchmarkGateReleaser is managed mode's gate releaser at scale, not a
// timed test: WEBHOOK_GATES_BENCH_PODS (10,000) unscheduled pods, a tenth of
// them gated; it reports the time to lift every gate and the API load of
// the releaser (requests and bytes read by verb), beside one list of every
// unscheduled pod, which the releaser did every 10 s from every replica
// before it watched them.
func BenchmarkGateReleaser(b *testing.B) {
	n, err := strconv.Atoi(cmp.Or(os.Getenv("WEBHOOK_GATES_BENCH_PODS"), "10000"))
	if err != nil {
		b.Fatal(err)
	}
	controlPlane.Start(b)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench-" + rand.String(6)}}
	if err := admin.Create(ctx, ns); err != nil {
		b.Fatal(err)
	}
	gated := createUnscheduledPods(b, ns.Name, n, n/10)

	// One list of the unscheduled pods, as the old releaser made.
	listing := &apiLoad{requests: map[string]int{}, bytes: map[string]int64{}}
	lister, err := client.New(listing.wrap(cfg), client.Options{Scheme: identity.Scheme()})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	var pods corev1.PodList
	if err := lister.List(ctx, &pods, client.MatchingFields{"spec.nodeName": ""}); err != nil {
		b.Fatal(err)
	}
	b.Logf("one list of the %d unscheduled pods (the old releaser's, every 10 s per replica): %s, %s", len(pods.Items), time.Since(start).Round(time.Millisecond), listing)

	for b.Loop() {
		load := &apiLoad{requests: map[string]int{}, bytes: map[string]int64{}}
		mgr, err := ctrl.NewManager(load.wrap(cfg), ctrl.Options{Scheme: identity.Scheme(), Metrics: metricsserver.Options{BindAddress: "0"},
			Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{&corev1.Pod{}: unscheduledPods()}}})
		if err != nil {
			b.Fatal(err)
		}
		if err := addGateReleaser(mgr, logr.Discard()); err != nil {
			b.Fatal(err)
		}
		mctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- mgr.Start(mctx) }()
		framework.Eventually(b, 10*time.Minute, "every gate lifted", func() error {
			if left := gatesLeft(b, ns.Name); left > 0 {
				return fmt.Errorf("%d of %d gates left", left, gated)
			}
			return nil
		})
		lifted := time.Since(start)
		// A quiet minute: the releaser's load once every gate is lifted.
		before := load.String()
		time.Sleep(time.Minute)
		b.Logf("released %d gates among %d unscheduled pods in %s; API load %s; a minute later %s", gated, n, lifted.Round(time.Millisecond), before, load)
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// createUnscheduledPods creates n pods that can never be scheduled (no node
// exists), the first gated of them with our scheduling gate.
func createUnscheduledPods(b *testing.B, ns string, n, gated int) int {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod-%05d", i)},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "demo"}}}}
				if i < gated {
					pod.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: aadv1.SchedulingGate}}
				}
				if err := admin.Create(context.Background(), pod); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return gated
}

func gatesLeft(b *testing.B, ns string) int {
	b.Helper()
	var pods corev1.PodList
	if err := admin.List(context.Background(), &pods, client.InNamespace(ns)); err != nil {
		b.Fatal(err)
	}
	left := 0
	for i := range pods.Items {
		if identity.HasGate(&pods.Items[i]) {
			left++
		}
	}
	return left
}
