package suite

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// benchSizes are the benchmark's pods, identities and ARM write latency
// (docs/performance.md), overridable with E2E_BENCH_PODS, E2E_BENCH_IDENTITIES
// and E2E_BENCH_WRITE_LATENCY.
func benchSizes(b *testing.B) (pods, identities int, latency time.Duration) {
	pods, identities, latency = 100, 10, 2*time.Second
	var err error
	if v := os.Getenv("E2E_BENCH_PODS"); v != "" {
		if pods, err = strconv.Atoi(v); err != nil {
			b.Fatalf("E2E_BENCH_PODS: %v", err)
		}
	}
	if v := os.Getenv("E2E_BENCH_IDENTITIES"); v != "" {
		if identities, err = strconv.Atoi(v); err != nil {
			b.Fatalf("E2E_BENCH_IDENTITIES: %v", err)
		}
	}
	if v := os.Getenv("E2E_BENCH_WRITE_LATENCY"); v != "" {
		if latency, err = time.ParseDuration(v); err != nil {
			b.Fatalf("E2E_BENCH_WRITE_LATENCY: %v", err)
		}
	}
	return pods, identities, latency
}

// BenchmarkTimeToFirstToken applies labelled demo pods in one `kubectl
// apply`, spread by the scheduler over the sandbox's two pools, and measures
// for each pod the time from the apply to its container's first token for
// its user-assigned identity, and the failed token requests the pods saw.
// Run it with -benchtime 1x: one iteration is one burst.
func BenchmarkTimeToFirstToken(b *testing.B) {
	if env.sb == nil {
		b.Skip("the sandbox needs root")
	}
	podCount, idCount, latency := benchSizes(b)
	env.az.ARM.SetWriteLatency(latency)
	b.Cleanup(func() { env.az.ARM.SetWriteLatency(0) })
	clientIDs := make([]string, idCount)
	for i := range clientIDs {
		name := fmt.Sprintf("bench-%02d", i)
		clientIDs[i] = userIdentity(b, name, name).ClientID
	}
	var manifest strings.Builder
	for i := range podCount {
		p := demoPod{Name: fmt.Sprintf("bench-%03d", i), Labels: map[string]string{aadv1.BindingLabel: fmt.Sprintf("bench-%02d", i%idCount), "bench": "ttft"},
			ClientID: clientIDs[i%idCount]}
		y, err := yaml.Marshal(p.object())
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(&manifest, "apiVersion: v1\nkind: Pod\n%s---\n", y)
	}
	b.Cleanup(func() { deleteBenchPods(b) })

	for b.Loop() {
		start := time.Now()
		kubectl(b, "apply", "-f", "-", "stdin:"+manifest.String())
		applied := time.Since(start)
		first := map[string]time.Time{}
		errorsBefore := map[string]int{}
		samples := map[string]string{} // a failed request's line per pod, for the log
		eventually(b, 10*time.Minute, "every pod's first token", func() error {
			var mu sync.Mutex
			var wg sync.WaitGroup
			for i := range podCount {
				name := fmt.Sprintf("bench-%03d", i)
				mu.Lock()
				_, done := first[name]
				mu.Unlock()
				if done {
					continue
				}
				wg.Go(func() {
					ok, errs, sample := firstToken(attempts(b, "default", name))
					mu.Lock()
					defer mu.Unlock()
					errorsBefore[name] = errs
					if sample != "" {
						samples[name] = sample
					}
					if !ok.IsZero() {
						first[name] = ok
					}
				})
			}
			wg.Wait()
			if len(first) < podCount {
				return fmt.Errorf("%d of %d pods have a token", len(first), podCount)
			}
			return nil
		})
		scheduled := scheduledTimes(b)
		var ttft, tts []time.Duration
		errs := 0
		for name, at := range first {
			ttft = append(ttft, at.Sub(start))
			errs += errorsBefore[name]
			if s, ok := scheduled[name]; ok {
				tts = append(tts, s.Sub(start))
			}
		}
		slices.Sort(ttft)
		slices.Sort(tts)
		b.ReportMetric(quantile(ttft, 0.5).Seconds(), "p50-s")
		b.ReportMetric(quantile(ttft, 0.9).Seconds(), "p90-s")
		b.ReportMetric(quantile(ttft, 1).Seconds(), "max-s")
		b.ReportMetric(float64(errs), "token-errors")
		b.Logf("%d pods, %d identities, write latency %s: kubectl apply took %s; scheduled (gate lifted, in seconds, second resolution) p50 %.0f max %.0f; first token p50 %s p90 %s max %s; %d failed token requests before the first token; %d ARM writes",
			podCount, idCount, latency, applied.Round(time.Millisecond), quantile(tts, 0.5).Seconds(), quantile(tts, 1).Seconds(),
			quantile(ttft, 0.5).Round(time.Millisecond), quantile(ttft, 0.9).Round(time.Millisecond), quantile(ttft, 1).Round(time.Millisecond), errs, len(env.az.ARM.Writes()))
		for _, name := range slices.Sorted(maps.Keys(samples))[:min(len(samples), 3)] {
			b.Logf("%s: %s", name, samples[name])
		}
	}
}

// firstToken returns when a demo pod first got its user-assigned token, how
// many token requests failed before and the last failure's line.
func firstToken(all []attempt) (at time.Time, errs int, failure string) {
	for _, a := range all {
		switch a.Msg {
		case userToken:
			return a.At, errs, failure
		case userDenied, defaultError:
			errs++
			failure = a.Line
		}
	}
	return time.Time{}, errs, failure
}

// scheduledTimes returns when each benchmark pod was scheduled: its gate
// was lifted just before.
func scheduledTimes(b *testing.B) map[string]time.Time {
	pods, err := env.client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "bench=ttft"})
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]time.Time{}
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionTrue {
				out[p.Name] = c.LastTransitionTime.Time
			}
		}
	}
	return out
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func deleteBenchPods(b *testing.B) {
	kubectl(b, "delete", "pods", "-n", "default", "-l", "bench=ttft", "--wait", "--timeout=3m")
}
