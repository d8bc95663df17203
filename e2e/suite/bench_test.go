//go:build e2e

package suite

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/demo"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// BenchmarkInstall times `helm install` of the chart, after an uninstall,
// to every webhook pod Ready and to the first labelled pod admitted for its
// identity: with the built-in certificates, and with cert-manager issuing
// them and cainjector injecting the CA (real nodes only). It leaves the
// release installed with the suite's defaults.
func BenchmarkInstall(b *testing.B) {
	installed(b)
	userIdentity(b, "bench-install", "bench-install")
	pod := demoPod{Name: "bench-install", Labels: map[string]string{aadv1.BindingLabel: "bench-install"}}.object()
	for _, certManager := range []bool{false, true} {
		b.Run(fmt.Sprintf("certManager=%t", certManager), func(b *testing.B) {
			c := cmClient(b)
			var toReady, toAdmitted []time.Duration
			for b.Loop() {
				if err := helmUninstall(); err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				if err := helmRelease("install", "--wait=hookOnly", "--set", fmt.Sprintf("certManager.enabled=%t", certManager)); err != nil {
					b.Fatal(err)
				}
				env.installed = true
				framework.Eventually(b, 3*time.Minute, "webhook pods Ready", func() error {
					var d appsv1.Deployment
					if err := c.Get(b.Context(), client.ObjectKey{Namespace: releaseNS, Name: webhookName}, &d); err != nil {
						return err
					}
					if d.Status.ReadyReplicas != *d.Spec.Replicas || d.Status.UpdatedReplicas != *d.Spec.Replicas {
						return fmt.Errorf("%d of %d ready", d.Status.ReadyReplicas, *d.Spec.Replicas)
					}
					return nil
				})
				toReady = append(toReady, time.Since(start))
				framework.Eventually(b, 3*time.Minute, "a labelled pod admitted", func() error {
					if why := admit(pod); why != "" {
						return errors.New(why)
					}
					return nil
				})
				toAdmitted = append(toAdmitted, time.Since(start))
			}
			slices.Sort(toReady)
			slices.Sort(toAdmitted)
			b.ReportMetric(quantile(toReady, 0.5).Seconds(), "s-to-webhook-ready")
			b.ReportMetric(quantile(toAdmitted, 0.5).Seconds(), "s-to-first-admission")
		})
	}
}

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
// As many unlabelled demo pods, interleaved in the same apply, are the
// baseline: what a pod costs the nodes with no identity to wait for. The
// gap between their container start and the labelled pods' first token is
// the identity's whole cost plus the demo's own first checks; the gap to
// their own (refused) request for the user-assigned token is the
// identity's cost alone. Run it with -benchtime 1x: one iteration is one
// burst. E2E_BENCH_MODE=federated runs it in federated mode: each identity
// has a federated credential for the pods' service account, and none goes
// on a pool.
func BenchmarkTimeToFirstToken(b *testing.B) {
	federated := os.Getenv("E2E_BENCH_MODE") == "federated"
	if federated {
		releaseOfItsOwn(b)
		if err := helmRelease("upgrade", federationValues("--set", "policy.mode=federated")...); err != nil {
			b.Fatal(err)
		}
	} else {
		installed(b)
	}
	podCount, idCount, latency := benchSizes(b)
	env.az.ARM.SetWriteLatency(latency)
	b.Cleanup(func() { env.az.ARM.SetWriteLatency(0) })
	clientIDs := make([]string, idCount)
	for i := range clientIDs {
		name := fmt.Sprintf("bench-%02d", i)
		id := userIdentity(b, name, name)
		if federated {
			federate(b, id, "default", "default")
		}
		clientIDs[i] = id.ClientID
	}
	var manifest strings.Builder
	for i := range podCount {
		p := demoPod{Name: fmt.Sprintf("bench-%03d", i), Labels: map[string]string{aadv1.BindingLabel: fmt.Sprintf("bench-%02d", i%idCount), "bench": "ttft"},
			ClientID: clientIDs[i%idCount], Period: demo.DefaultPeriod}
		y, err := yaml.Marshal(p.object())
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(&manifest, "apiVersion: v1\nkind: Pod\n%s---\n", y)
		baseline := demoPod{Name: fmt.Sprintf("bench-u-%03d", i), Labels: map[string]string{"bench": "ttft"}, ClientID: clientIDs[i%idCount], Period: demo.DefaultPeriod}
		if y, err = yaml.Marshal(baseline.object()); err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(&manifest, "apiVersion: v1\nkind: Pod\n%s---\n", y)
	}
	b.Cleanup(func() { deleteBenchPods(b) })
	logComponentMemory(b, "at rest")

	for b.Loop() {
		start := time.Now()
		kubectl(b, "apply", "-f", "-", "stdin:"+manifest.String())
		applied := time.Since(start)
		first := map[string]time.Time{}
		errorsBefore := map[string]int{}
		started := map[string]time.Time{}
		samples := map[string]string{} // a failed request's line per pod, for the log
		baseline := map[string]baselinePod{}
		framework.Eventually(b, 10*time.Minute, "every labelled pod's first token and every unlabelled pod's refused request", func() error {
			var mu sync.Mutex
			var wg sync.WaitGroup
			for i := range podCount {
				name := fmt.Sprintf("bench-u-%03d", i)
				mu.Lock()
				done := !baseline[name].asked.IsZero()
				mu.Unlock()
				if done {
					continue
				}
				wg.Go(func() {
					all := attempts(b, "default", name)
					var p baselinePod
					for _, a := range all {
						switch {
						case a.Msg == demoStarted && p.started.IsZero():
							p.started = a.At
						case a.Msg == userDenied && p.asked.IsZero():
							p.asked = a.At
						}
					}
					mu.Lock()
					defer mu.Unlock()
					baseline[name] = p
				})
			}
			for i := range podCount {
				name := fmt.Sprintf("bench-%03d", i)
				mu.Lock()
				_, done := first[name]
				mu.Unlock()
				if done {
					continue
				}
				wg.Go(func() {
					all := attempts(b, "default", name)
					ok, errs, sample := firstToken(all)
					mu.Lock()
					defer mu.Unlock()
					if len(all) > 0 && all[0].Msg == demoStarted {
						started[name] = all[0].At
					}
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
			asked := 0
			for _, p := range baseline {
				if !p.asked.IsZero() {
					asked++
				}
			}
			if len(first) < podCount || asked < podCount {
				return fmt.Errorf("%d of %d labelled pods have a token, %d of %d unlabelled pods asked for one", len(first), podCount, asked, podCount)
			}
			return nil
		})
		var base, baseAsked []time.Duration
		for _, p := range baseline {
			base = append(base, p.started.Sub(start))
			baseAsked = append(baseAsked, p.asked.Sub(start))
		}
		scheduled, ready := conditionTimes(b, corev1.PodScheduled), conditionTimes(b, corev1.PodReady)
		var ttft, tts, tst, trd, own []time.Duration
		errs, slowest := 0, ""
		for name, at := range first {
			if slowest == "" || at.After(first[slowest]) {
				slowest = name
			}
			ttft = append(ttft, at.Sub(start))
			errs += errorsBefore[name]
			tts = append(tts, scheduled[name].Sub(start))
			tst = append(tst, started[name].Sub(start))
			trd = append(trd, ready[name].Sub(start))
			own = append(own, at.Sub(started[name]))
		}
		for _, d := range [][]time.Duration{ttft, tts, tst, trd, own, base, baseAsked} {
			slices.Sort(d)
		}
		b.ReportMetric(quantile(ttft, 0.5).Seconds(), "p50-s")
		b.ReportMetric(quantile(ttft, 0.9).Seconds(), "p90-s")
		b.ReportMetric(quantile(ttft, 1).Seconds(), "max-s")
		b.ReportMetric(float64(errs), "token-errors")
		// The goal: within 1 s of the unlabelled pods' start, p50 and max.
		b.ReportMetric((quantile(ttft, 0.5) - quantile(base, 0.5)).Seconds(), "gap-p50-s")
		b.ReportMetric((quantile(ttft, 1) - quantile(base, 1)).Seconds(), "gap-max-s")
		b.ReportMetric((quantile(ttft, 0.5) - quantile(baseAsked, 0.5)).Seconds(), "gap-asked-p50-s")
		b.ReportMetric((quantile(ttft, 1) - quantile(baseAsked, 1)).Seconds(), "gap-asked-max-s")
		b.Logf("%d pods, %d identities, write latency %s: kubectl apply took %s; %d failed token requests before the first token; %d ARM writes", podCount, idCount, latency, applied.Round(time.Millisecond), errs, len(env.az.ARM.Writes()))
		// Before the long lines: a benchmark's log is cut at a length.
		for _, name := range slices.Sorted(maps.Keys(samples))[:min(len(samples), 3)] {
			b.Logf("%s: %s", name, samples[name])
		}
		for _, q := range []struct {
			what string
			d    []time.Duration
		}{{"unlabelled: container started", base}, {"unlabelled: asked for the user-assigned token", baseAsked}, {"scheduled (gate lifted; 1 s resolution)", tts}, {"container started", tst}, {"Ready with its IP (1 s resolution)", trd}, {"first token", ttft}, {"container start → first token (demo's own)", own}} {
			b.Logf("%-44s p50 %6.2fs  p90 %6.2fs  max %6.2fs", q.what, quantile(q.d, 0.5).Seconds(), quantile(q.d, 0.9).Seconds(), quantile(q.d, 1).Seconds())
		}
		logComponentMemory(b, "after the burst")
		logSlowest(b, slowest)
	}
}

// baselinePod is when an unlabelled demo pod started and first asked for
// the user-assigned token (refused).
type baselinePod struct{ started, asked time.Time }

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

// conditionTimes returns when each benchmark pod's condition became true
// (PodScheduled: its gate was lifted just before).
func conditionTimes(b *testing.B, cond corev1.PodConditionType) map[string]time.Time {
	pods, err := env.client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "bench=ttft"})
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]time.Time{}
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == cond && c.Status == corev1.ConditionTrue {
				out[p.Name] = c.LastTransitionTime.Time
			}
		}
	}
	return out
}

// logSlowest logs the start of the slowest pod's log, where its time went.
func logSlowest(b *testing.B, name string) {
	raw, err := env.client.CoreV1().Pods("default").GetLogs(name, &corev1.PodLogOptions{Container: "demo"}).DoRaw(context.Background())
	if err != nil {
		b.Logf("logs of %s: %v", name, err)
		return
	}
	lines := strings.SplitN(string(raw), "\n", 7)
	for _, l := range lines[:min(len(lines), 6)] {
		b.Logf("slowest pod %s: %.700s", name, l)
	}
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

// logComponentMemory logs, in one line, the memory cgroup of every
// container of the release: usage (what the kubelet's
// eviction and a limit see) and its rss (anonymous) part, in MiB.
func logComponentMemory(b *testing.B, when string) {
	pods, err := env.client.CoreV1().Pods(releaseNS).List(b.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
	if err != nil {
		b.Fatal(err)
	}
	var line strings.Builder
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			_, id, _ := strings.Cut(c.ContainerID, "://")
			dirs, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/memory/%s*/kubepods*/pod%s/%s", sandbox.Prefix, p.UID, id))
			more, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/memory/%s*/kubepods*/*/pod%s/%s", sandbox.Prefix, p.UID, id))
			if dirs = append(dirs, more...); len(dirs) != 1 {
				fmt.Fprintf(&line, " %s: no single cgroup %v;", c.Name, dirs)
				continue
			}
			usage, _ := os.ReadFile(filepath.Join(dirs[0], "memory.usage_in_bytes"))
			stat, _ := os.ReadFile(filepath.Join(dirs[0], "memory.stat"))
			var rss float64
			for _, l := range strings.Split(string(stat), "\n") {
				if v, ok := strings.CutPrefix(l, "rss "); ok {
					rss, _ = strconv.ParseFloat(v, 64)
				}
			}
			u, _ := strconv.ParseFloat(strings.TrimSpace(string(usage)), 64)
			fmt.Fprintf(&line, " %s %.1f/%.1f;", c.Name, u/(1<<20), rss/(1<<20))
		}
	}
	b.Logf("memory %s (MiB usage/rss):%s", when, line.String())
}
