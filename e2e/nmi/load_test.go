//go:build e2e

package nmi_test

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// TestNMILoad is the load generator behind `make bench-nmi`, not a timed
// test: it prints latency, throughput and NMI's memory for
// docs/performance.md and asserts nothing about them.
func TestNMILoad(t *testing.T) {
	if !loadGenerator(t, "AADPI_NMI_LOAD", "bench-nmi") {
		return
	}
	n := setupNode(t)
	// Cluster size first, so the latency runs see a full cluster and the
	// first RSS figure is NMI at rest.
	total, _ := strconv.Atoi(os.Getenv("AADPI_NMI_LOAD_PODS"))
	if total > 0 {
		onNode := createLoadPods(t, n.client, total, 110)
		time.Sleep(10 * time.Second) // let the informer settle
		t.Logf("NMI RSS with %d pods in the cluster, %d on its node: %s", total+len(n.pods), onNode+len(n.pods), rss(t, n.nmi.Process.Pid))
	}
	// AADPI_NMI_LOAD_DURATION lengthens each run: a minute of misses at
	// 32 callers asks for about 56,000 distinct resources.
	duration, err := time.ParseDuration(cmp.Or(os.Getenv("AADPI_NMI_LOAD_DURATION"), "8s"))
	if err != nil {
		t.Fatalf("AADPI_NMI_LOAD_DURATION: %v", err)
	}
	podA := n.pods["pod-a"]
	hitURL := func(int) string { return "http://" + metadataIP + tokenPath("https://vault.azure.net") }

	// Every miss request names a new resource, so NMI passes each one to
	// IMDS; the direct runs send the same requests to the fake IMDS from the
	// node namespace, which is not intercepted.
	var seq sync.Map
	next := func(prefix string) func(int) string {
		return func(w int) string {
			v, _ := seq.LoadOrStore(prefix+strconv.Itoa(w), new(int))
			i := v.(*int)
			*i++
			return "http://" + metadataIP + tokenPath(fmt.Sprintf("https://%s-%d-%d.example", prefix, w, *i))
		}
	}
	// The pool record's size, side by side: NMI reads it on every request.
	for _, entries := range recordSizes(t) {
		padRecord(t, n, entries)
		hit := load(t, 32, duration, hitURL, podA.netns)
		t.Logf("pool record of %4d entries  concurrency 32  cache hit via NMI: %s", entries, hit)
	}
	padRecord(t, n, 1)
	for _, c := range []int{32, 1} {
		hit := load(t, c, duration, hitURL, podA.netns)
		t.Logf("concurrency %2d  cache hit via NMI:  %s", c, hit)
		direct := load(t, c, duration, next(fmt.Sprintf("direct%d", c)), "")
		t.Logf("concurrency %2d  direct fake IMDS:   %s", c, direct)
		calls, conns := n.imdsCalls.Load(), n.imdsConns.Load()
		miss := load(t, c, duration, next(fmt.Sprintf("nmi%d", c)), podA.netns)
		calls, conns = n.imdsCalls.Load()-calls, n.imdsConns.Load()-conns
		t.Logf("concurrency %2d  cache miss via NMI: %s; NMI opened %d connections to IMDS for %d calls (%.3f per call)", c, miss, conns, calls, float64(conns)/float64(max(calls, 1)))
		t.Logf("concurrency %2d  miss-path overhead: p50 %v, p99 %v", c, miss.p50-direct.p50, miss.p99-direct.p99)
		t.Logf("concurrency %2d  NMI RSS after %d distinct resources: %s", c, seqTotal(&seq), rss(t, n.nmi.Process.Pid))
	}
	federatedLoad(t, n, duration, hitURL, next)
}

// federatedLoad runs the hit and miss runs again for a federated identity,
// given to pod-b (unused by the runs above): every miss is an Azure AD
// exchange, and the service-account token they carry comes from one
// TokenRequest, cached until near its expiry, for the whole run.
func federatedLoad(t *testing.T, n *node, d time.Duration, hitURL func(int) string, next func(string) func(int) string) {
	start := time.Now()
	federatePod(t, n, "pod-b")
	podB := n.pods["pod-b"]
	for _, c := range []int{32, 1} {
		hit := load(t, c, d, hitURL, podB.netns)
		t.Logf("concurrency %2d  federated hit via NMI:  %s", c, hit)
		miss := load(t, c, d, next(fmt.Sprintf("fed%d", c)), podB.netns)
		t.Logf("concurrency %2d  federated miss via NMI (an Azure AD exchange each): %s", c, miss)
	}
	requests, exchanges := n.aad.counts("pod-b")
	t.Logf("federated: NMI made %d TokenRequest(s) for pod-b in %v, for %d Azure AD exchanges; NMI RSS now %s",
		requests, time.Since(start).Round(time.Second), exchanges, rss(t, n.nmi.Process.Pid))
}

// seqTotal is how many distinct resources the miss runs asked NMI for.
func seqTotal(seq *sync.Map) int {
	total := 0
	seq.Range(func(k, v any) bool {
		if strings.HasPrefix(k.(string), "nmi") {
			total += *v.(*int)
		}
		return true
	})
	return total
}

// recordSizes are the pool record sizes (entries) of the side-by-side hit
// runs: AADPI_NMI_LOAD_RECORD_ENTRIES, comma-separated.
func recordSizes(t *testing.T) []int {
	t.Helper()
	var sizes []int
	for f := range strings.SplitSeq(cmp.Or(os.Getenv("AADPI_NMI_LOAD_RECORD_ENTRIES"), "1,1000"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			t.Fatalf("AADPI_NMI_LOAD_RECORD_ENTRIES: %q is not a positive number", f)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// padRecord makes the node pool's record hold entries entries: pod-a's
// and fillers as large as real ones (an ARM resource ID, a client ID),
// Assigned in another namespace, as the assigner would write them.
func padRecord(t *testing.T, n *node, entries int) {
	t.Helper()
	ctx := context.Background()
	p, err := nodepool.ParseID(n.pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	var rec aadv1.AzureAssignedIdentity
	if err := n.client.Get(ctx, client.ObjectKey{Namespace: assignmentsNS, Name: identity.RecordName(p)}, &rec); err != nil {
		t.Fatal(err)
	}
	rec.Status.Identities = slices.DeleteFunc(rec.Status.Identities, func(e aadv1.IdentityAssignment) bool {
		return e.AzureIdentityRef.Namespace == "filler"
	})
	for i := len(rec.Status.Identities); i < entries; i++ {
		name := fmt.Sprintf("identity-%05d", i)
		rec.Status.Identities = append(rec.Status.Identities, aadv1.IdentityAssignment{
			AzureIdentityRef: aadv1.IdentityReference{Namespace: "filler", Name: name},
			ClientID:         fmt.Sprintf("00000000-0000-0000-0000-%012d", i),
			ResourceID:       "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name,
			State:            aadv1.StateAssigned, Pods: 3,
		})
	}
	slices.SortFunc(rec.Status.Identities, func(a, b aadv1.IdentityAssignment) int {
		return aadv1.CompareRefs(a.AzureIdentityRef, b.AzureIdentityRef.Namespace, b.AzureIdentityRef.Name)
	})
	rec.Status.Assigned = int32(len(rec.Status.Identities))
	if err := n.client.Status().Update(ctx, &rec); err != nil {
		t.Fatalf("padding the pool record to %d entries: %v", entries, err)
	}
	time.Sleep(2 * time.Second) // let NMI's informer see it
}

// loadGenerator skips a load generator unless env is 1 (its make target
// sets it), and otherwise reruns it inside the node namespace; it reports
// whether this process is that rerun, where the generator runs.
func loadGenerator(t *testing.T, env, target string) bool {
	if os.Getenv(env) != "1" {
		t.Skip("load generator: run with `make " + target + "`")
	}
	if !testns.InChild() {
		runInNamespaces(t)
		return false
	}
	return true
}

func tokenPath(resource string) string {
	return "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + resource
}

type result struct {
	requests, errors int
	p50, p99         time.Duration
	rate             float64
}

func (r result) String() string {
	return fmt.Sprintf("%d requests (%d errors), %.0f req/s, p50 %v, p99 %v", r.requests, r.errors, r.rate, r.p50, r.p99)
}

// load runs workers, each with its own keep-alive connection opened in
// netnsName ("" for the current namespace), for d.
func load(t *testing.T, workers int, d time.Duration, url func(worker int) string, netnsName string) result {
	t.Helper()
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			if netnsName != "" {
				tr.DialContext = dialIn(netnsName)
			}
			c := &http.Client{Transport: tr}
			var mine []time.Duration
			bad := 0
			for ctx.Err() == nil {
				req, _ := http.NewRequest(http.MethodGet, url(w), nil)
				req.Header.Set("Metadata", "true")
				t0 := time.Now()
				resp, err := c.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != http.StatusOK {
					bad++
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			tr.CloseIdleConnections()
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	if len(lat) == 0 {
		t.Fatalf("no successful requests (%d errors)", errs)
	}
	pct := func(p float64) time.Duration { return lat[int(float64(len(lat)-1)*p)].Round(time.Microsecond) }
	return result{requests: len(lat), errors: errs, p50: pct(0.50), p99: pct(0.99), rate: float64(len(lat)) / elapsed.Seconds()}
}

// createLoadPods creates total running pods, onNode of them on NMI's node.
func createLoadPods(t *testing.T, c client.Client, total, onNode int) int {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				nodeName := fmt.Sprintf("other-%d", i%100)
				if i < onNode {
					nodeName = "node-0"
				}
				ip := fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256)
				p := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("load-%d", i), Labels: map[string]string{"app": "load"}},
					Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "demo"}}},
				}
				if err := c.Create(ctx, p); err != nil {
					t.Errorf("creating pod: %v", err)
					continue
				}
				p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
				if err := c.Status().Update(ctx, p); err != nil {
					t.Errorf("setting pod status: %v", err)
				}
			}
		}()
	}
	for i := range total {
		work <- i
	}
	close(work)
	wg.Wait()
	return onNode
}

// rss is a process's resident set and what it is made of: anonymous
// memory (heap, stacks) and file pages (the binary's text and data).
func rss(t *testing.T, pid int) string {
	return fmt.Sprintf("%d kB (anon %d kB, file %d kB)", procStatusKB(t, pid, "VmRSS"), procStatusKB(t, pid, "RssAnon"), procStatusKB(t, pid, "RssFile"))
}

// rssKB reads a process's resident set size in KiB.
func rssKB(t *testing.T, pid int) int { return procStatusKB(t, pid, "VmRSS") }

// procStatusKB reads a KiB field of /proc/PID/status.
func procStatusKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("%s %q: %v", field, l, err)
			}
			return kb
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
