//go:build integration

package assigner_test

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/assigner"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
)

// BenchmarkPodReady is the load generator of docs/performance.md: it
// creates pods × identities × pools at once against the fake ARM with a
// write latency, and reports the time from each pod's creation to its gate
// being lifted (observed through a watch), the ARM calls by kind and the
// process RSS. Sizes come from the environment: ASSIGNER_BENCH_PODS (100),
// _IDENTITIES (10), _POOLS (3), _LATENCY (2s); ASSIGNER_BENCH_SCHEDULED=1
// creates pod i on the node of pool i%pools (one pool per pod) instead of
// pending pods that target every pool. ASSIGNER_BENCH_BINARY names an
// assigner binary to run instead of the in-process one, so that the RSS
// reported is the assigner's alone (it polls ARM's operations every 1 s,
// the binary's minimum, instead of 50 ms); ASSIGNER_BENCH_ARGS adds flags
// to it and ASSIGNER_BENCH_ENV variables to its environment (such as
// GOMEMLIMIT=150MiB, which would bound the generator's heap too if set on
// the test).
func BenchmarkPodReady(b *testing.B) {
	pods, identities, pools := envInt("ASSIGNER_BENCH_PODS", 100), envInt("ASSIGNER_BENCH_IDENTITIES", 10), envInt("ASSIGNER_BENCH_POOLS", 3)
	scheduled := os.Getenv("ASSIGNER_BENCH_SCHEDULED") == "1"
	latency, err := time.ParseDuration(envString("ASSIGNER_BENCH_LATENCY", "2s"))
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		window, err := time.ParseDuration(envString("ASSIGNER_BENCH_BATCH_WINDOW", "500ms"))
		if err != nil {
			b.Fatal(err)
		}
		w := newWorld(b, func(o *assigner.Options) { o.BatchWindow = window })
		var proc *process
		if path := os.Getenv("ASSIGNER_BENCH_BINARY"); path != "" {
			proc = w.runBinary(path, window)
		}
		w.arm.SetWriteLatency(latency)
		for i := range pools {
			w.pool(fmt.Sprintf("pool%d", i), i%2 == 0, nil)
		}
		for i := range identities {
			w.identity(fmt.Sprintf("id%d", i))
		}
		wc, err := client.NewWithWatch(w.cfg, client.Options{Scheme: identity.Scheme()})
		if err != nil {
			b.Fatal(err)
		}
		var (
			mu      sync.Mutex
			created = map[string]time.Time{}
			ready   = map[string]time.Duration{}
			// the resourceVersion each create returned: the apiserver's order
			stored = map[string]string{}
		)
		// observe notes the pod's gate lifted, and reports whether every pod's is.
		observe := func(pod *corev1.Pod) bool {
			mu.Lock()
			defer mu.Unlock()
			if _, seen := ready[pod.Name]; !seen && !gated(pod) && pod.Annotations[aadv1.AnnotationAssignment] == aadv1.AssignmentAssigned {
				ready[pod.Name] = time.Since(created[pod.Name])
			}
			return len(ready) == pods
		}
		stopWatch := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			// The apiserver may end a watch that falls behind (10k pods):
			// list what changed meanwhile and watch again.
			for rv := ""; ; {
				watch, err := wc.Watch(w.ctx, &corev1.PodList{}, client.InNamespace(w.ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv}})
				if err != nil {
					b.Error(err)
					return
				}
				for ev := range watch.ResultChan() {
					if pod, ok := ev.Object.(*corev1.Pod); ok && observe(pod) {
						watch.Stop()
						return
					}
				}
				select {
				case <-stopWatch:
					return
				default:
				}
				var list corev1.PodList
				if err := wc.List(w.ctx, &list, client.InNamespace(w.ns)); err != nil {
					b.Error(err)
					return
				}
				for i := range list.Items {
					if observe(&list.Items[i]) {
						return
					}
				}
				rv = list.ResourceVersion
			}
		}()
		// Read once: the generator would else list every binding and
		// identity per pod, and trickle the pods in.
		admit := w.admission()
		writesBefore := apiWrites(b, w.cfg)
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for i := range pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				name := fmt.Sprintf("pod%d", i)
				mu.Lock()
				created[name] = time.Now()
				mu.Unlock()
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name, Labels: map[string]string{aadv1.BindingLabel: fmt.Sprintf("id%d", i%identities)}},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "demo"}}},
				}
				if scheduled {
					pod.Spec.NodeName = fmt.Sprintf("%s-pool%d", w.ns, i%pools)
				}
				admit.admit(pod)
				if err := w.c.Create(w.ctx, pod); err != nil {
					b.Error(err)
				}
				mu.Lock()
				stored[name] = pod.ResourceVersion
				mu.Unlock()
			}()
		}
		wg.Wait()
		b.Logf("created %d pods in %s", pods, time.Since(start))
		timeout := time.After(30 * time.Minute)
	wait:
		for {
			select {
			case <-done:
				break wait
			case <-timeout:
				mu.Lock()
				n := len(ready)
				mu.Unlock()
				b.Fatalf("only %d of %d pods ready", n, pods)
			case <-time.After(5 * time.Second):
				if proc != nil {
					if err := proc.exitedEarly(); err != nil {
						b.Fatal(err)
					}
				}
			}
		}
		elapsed := time.Since(start)
		close(stopWatch)
		if len(ready) < pods {
			b.Fatalf("watch ended with %d of %d pods ready", len(ready), pods)
		}
		time.Sleep(2 * time.Second) // the records' last status writes follow the gates
		writesDuring(b, writesBefore, apiWrites(b, w.cfg), pods, elapsed)
		var lat []time.Duration
		for _, d := range ready {
			lat = append(lat, d)
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		// The burst's first pod: the batch window must not cost it more
		// than the write latency it waits for anyway.
		firstName := ""
		for name, at := range created {
			if firstName == "" || at.Before(created[firstName]) {
				firstName = name
			}
		}
		first := ready[firstName]
		logTimeline(b, start, created, ready, stored, w.arm.Writes(), latency, firstName)
		b.ReportMetric(first.Seconds(), "first-s")
		b.ReportMetric(lat[len(lat)/2].Seconds(), "p50-s")
		b.ReportMetric(lat[len(lat)*99/100].Seconds(), "p99-s")
		b.ReportMetric(lat[len(lat)-1].Seconds(), "max-s")
		perPool := map[string]int{}
		for _, wr := range w.arm.Writes() {
			perPool[wr.Pool[strings.LastIndex(wr.Pool, "/")+1:]]++
		}
		var records aadv1.AzureAssignedIdentityList
		if err := w.c.List(w.ctx, &records, client.InNamespace(w.recordNS)); err != nil {
			b.Fatal(err)
		}
		b.Logf("records=%d scheduled=%t", len(records.Items), scheduled)
		memory := "test process (assigner and load generator) " + vmRSS("/proc/self/status")
		if proc != nil {
			memory = "assigner process " + proc.rss()
		}
		b.Logf("pods=%d identities=%d pools=%d latency=%s first=%s p50=%s p99=%s max=%s all gates lifted after %s calls=%v patches/pool=%v rss: %s",
			pods, identities, pools, latency, first, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1], elapsed.Round(time.Millisecond), w.arm.Calls(), perPool, memory)
		w.stop()
	}
}

// logTimeline tells where the first pod's time went: the ARM writes (sent
// after the batch window), then the gates, all since the burst's start.
func logTimeline(b *testing.B, start time.Time, created map[string]time.Time, ready map[string]time.Duration, stored map[string]string, writes []fakeazure.Write, latency time.Duration, firstName string) {
	var firstWrite, lastWrite, firstLift time.Duration
	for i, wr := range writes {
		at := wr.At.Sub(start)
		if i == 0 || at < firstWrite {
			firstWrite = at
		}
		lastWrite = max(lastWrite, at)
	}
	firstPods := created[firstName].Add(ready[firstName])
	before, storedBefore := 0, 0 // gates lifted, pods stored before the first pod's
	for name, d := range ready {
		lifted := created[name].Add(d)
		if at := lifted.Sub(start); firstLift == 0 || at < firstLift {
			firstLift = at
		}
		if lifted.Before(firstPods) {
			before++
		}
		if c, err := resourceversion.CompareResourceVersion(stored[name], stored[firstName]); err == nil && c < 0 {
			storedBefore++
		}
	}
	b.Logf("since the first create: PATCHes sent %s to %s (each takes %s), first gate lifted %s, the first pod's %s (after %d others; the apiserver stored %d pods before it)",
		firstWrite.Round(time.Millisecond), lastWrite.Round(time.Millisecond), latency, firstLift.Round(time.Millisecond), firstPods.Sub(start).Round(time.Millisecond), before, storedBefore)
}

// topRequests lists the n kinds of request the apiserver served most
// between two readings.
func topRequests(before, after map[string]float64, n int) string {
	type count struct {
		kind string
		n    float64
	}
	var counts []count
	for key, v := range after {
		if kind, ok := strings.CutPrefix(key, requestPrefix); ok && v-before[key] > 0 {
			counts = append(counts, count{kind, v - before[key]})
		}
	}
	sort.Slice(counts, func(i, j int) bool { return counts[i].n > counts[j].n })
	var parts []string
	for _, c := range counts[:min(n, len(counts))] {
		parts = append(parts, fmt.Sprintf("%s %.0f", c.kind, c.n))
	}
	return strings.Join(parts, ", ")
}

func envInt(name string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(name), &n); err != nil || n <= 0 {
		return def
	}
	return n
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// vmRSS reads a process's resident set, now and at its peak, from its
// /proc status file.
func vmRSS(status string) string {
	data, err := os.ReadFile(status)
	if err != nil {
		return "unknown"
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		for _, field := range []string{"VmRSS:", "VmHWM:"} { // now, peak
			if v, ok := strings.CutPrefix(line, field); ok {
				out = append(out, field+" "+strings.TrimSpace(v))
			}
		}
	}
	if len(out) == 0 {
		return "unknown"
	}
	return strings.Join(out, " ")
}

// allRequests counts every request the apiserver served, reads included;
// requestPrefix + "VERB resource" counts them by kind.
const (
	allRequests   = "all requests"
	requestPrefix = "request "
)

// apiWrites reads the apiserver's apiserver_request_total and sums the
// writes (create, update, patch, delete) per resource, subresources
// apart ("azureassignedidentities/status"), and every request under
// allRequests.
func apiWrites(b *testing.B, cfg *rest.Config) map[string]float64 {
	b.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	raw, err := cs.RESTClient().Get().AbsPath("/metrics").DoRaw(b.Context())
	if err != nil {
		b.Fatalf("reading the apiserver's metrics: %v", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		b.Fatalf("parsing the apiserver's metrics: %v", err)
	}
	out := map[string]float64{}
	for _, m := range families["apiserver_request_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		key := labels["resource"]
		if sub := labels["subresource"]; sub != "" {
			key += "/" + sub
		}
		out[requestPrefix+labels["verb"]+" "+key] += m.GetCounter().GetValue()
		switch labels["verb"] {
		case "POST", "PUT", "PATCH", "APPLY", "DELETE":
		default:
			out[allRequests] += m.GetCounter().GetValue()
			continue
		}
		if labels["verb"] == "POST" && key == "pods" {
			key = "pods (created by the generator)"
		}
		out[key] += m.GetCounter().GetValue()
		out[allRequests] += m.GetCounter().GetValue()
	}
	return out
}

// writesDuring reports the API writes per resource between two readings
// and the writes per pod of the assigner's objects: pods (the generator's
// creates apart), records with their status, events; and the apiserver's
// request rate over the burst (from the first create to the last gate).
func writesDuring(b *testing.B, before, after map[string]float64, pods int, elapsed time.Duration) {
	b.Helper()
	var parts []string
	var total float64
	for _, key := range []string{"pods", "azureassignedidentities", "azureassignedidentities/status", "events"} {
		n := after[key] - before[key]
		total += n
		parts = append(parts, fmt.Sprintf("%s=%.0f", key, n))
	}
	b.ReportMetric(total/float64(pods), "writes/pod")
	b.Logf("API writes: %s; %.2f per pod", strings.Join(parts, " "), total/float64(pods))
	rate := (after[allRequests] - before[allRequests]) / elapsed.Seconds()
	b.ReportMetric(rate, "apiserver-req/s")
	b.Logf("apiserver: %.0f requests (all clients, the generator's included, and 2 s after the last gate), %.0f/s over the %s burst; most: %s",
		after[allRequests]-before[allRequests], rate, elapsed.Round(time.Millisecond), topRequests(before, after, 8))
}
