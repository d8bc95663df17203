// Command loadgen measures the admission webhook: it starts a real apiserver
// (envtest) and the webhook, then sends pod AdmissionReviews over TLS at a
// fixed concurrency (and optionally a fixed rate) and reports latency
// percentiles and throughput. Run it through `make bench`.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	"github.com/aad-pod-identity/aad-pod-identity/webhook"
)

func main() {
	var (
		concurrency = flag.Int("concurrency", 8, "Requests in flight.")
		rate        = flag.Int("rate", 0, "Reviews per second in total (0: as fast as the concurrency allows).")
		duration    = flag.Duration("duration", 30*time.Second, "Length of the measured run.")
		path        = flag.String("path", webhook.MutatePodPath, "Webhook path to load.")
	)
	flag.Parse()
	logf.SetLogger(zap.New(zap.Level(zapcore.ErrorLevel)))
	if err := run(*concurrency, *rate, *duration, *path); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(concurrency, rate int, duration time.Duration, path string) error {
	env, err := framework.NewEnvironment(framework.Options{Webhooks: true})
	if err != nil {
		return err
	}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting control plane: %w", err)
	}
	defer func() { _ = env.Stop() }()

	ctx, cancel := context.WithCancel(context.Background())
	wio := env.WebhookInstallOptions
	mgr, err := webhook.NewManager(ctx, cfg, webhook.Options{
		Port: wio.LocalServingPort, CertDir: wio.LocalServingCertDir, CertName: "tls.crt", KeyName: "tls.key",
		MetricsAddr: "0", ProbeAddr: "0",
	})
	if err != nil {
		cancel()
		return err
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: manager:", err)
		}
	}()

	if err := seed(ctx, cfg); err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(wio.LocalServingCAData)
	httpc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: concurrency,
	}}
	url := fmt.Sprintf("https://%s:%d%s", wio.LocalServingHost, wio.LocalServingPort, path)
	body, err := review()
	if err != nil {
		return err
	}
	// Warm up: the first review waits for the cache to sync.
	if _, err := send(httpc, url, body); err != nil {
		return err
	}

	fmt.Printf("loadgen: %s concurrency=%d rate=%d duration=%s\n", url, concurrency, rate, duration)
	latencies, failures, elapsed := load(httpc, url, body, concurrency, rate, duration)
	report(latencies, failures, elapsed)
	return nil
}

// seed creates the walkthrough's identity and binding that the reviews
// resolve to, so every review does a full resolution.
func seed(ctx context.Context, cfg *rest.Config) error {
	c, err := client.New(cfg, client.Options{Scheme: identity.Scheme()})
	if err != nil {
		return err
	}
	objs := []client.Object{
		&aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo"}, Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.UserAssignedMSI, ClientID: "91ff0ee7-35fc-46d0-9cd0-51a7ea9ec7f2",
			ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/demo"}},
		&aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo-binding"},
			Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "demo", Selector: "demo"}},
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("creating %s: %w", o.GetName(), err)
		}
	}
	return nil
}

// review is a CREATE review of the walkthrough's demo pod.
func review() ([]byte, error) {
	pod := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "demo", Namespace: "default", Labels: map[string]string{aadv1.BindingLabel: "demo"}},
		Spec: corev1.PodSpec{
			Containers:   []corev1.Container{{Name: "demo", Image: "mcr.microsoft.com/oss/azure/aad-pod-identity/demo:v1.7.5"}},
			NodeSelector: map[string]string{"kubernetes.io/os": "linux"},
		},
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	return json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "loadgen", Operation: admissionv1.Create, Namespace: "default",
			Kind:     metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Object:   runtime.RawExtension{Raw: raw},
		},
	})
}

// send posts one review and checks that it was admitted with a patch.
func send(c *http.Client, url string, body []byte) (time.Duration, error) {
	start := time.Now()
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	elapsed := time.Since(start)
	if err != nil {
		return 0, err
	}
	var r admissionv1.AdmissionReview
	if err := json.Unmarshal(out, &r); err != nil || r.Response == nil {
		return 0, fmt.Errorf("status %d, not an AdmissionReview: %.200s", resp.StatusCode, out)
	}
	if !r.Response.Allowed || len(r.Response.Patch) == 0 {
		return 0, fmt.Errorf("review not admitted with a patch: %+v", r.Response.Result)
	}
	return elapsed, nil
}

// load runs the workers for the duration. With a rate, request n is due at
// start + n/rate whoever sends it, so the offered load stays fixed even when
// some requests are slow (open loop, up to the concurrency limit).
func load(c *http.Client, url string, body []byte, concurrency, rate int, duration time.Duration) ([]time.Duration, int64, time.Duration) {
	var (
		mu        sync.Mutex
		latencies []time.Duration
		failures  atomic.Int64
		issued    atomic.Int64
		wg        sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(duration)
	for range concurrency {
		wg.Go(func() {
			var mine []time.Duration
			for {
				if rate > 0 {
					due := start.Add(time.Duration(issued.Add(1)) * time.Second / time.Duration(rate))
					time.Sleep(time.Until(due))
				}
				if time.Now().After(deadline) {
					break
				}
				d, err := send(c, url, body)
				if err != nil {
					failures.Add(1)
					continue
				}
				mine = append(mine, d)
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return latencies, failures.Load(), time.Since(start)
}

func report(latencies []time.Duration, failures int64, elapsed time.Duration) {
	if len(latencies) == 0 {
		fmt.Printf("no successful reviews, %d failures\n", failures)
		return
	}
	slices.Sort(latencies)
	pct := func(p float64) time.Duration { return latencies[int(p*float64(len(latencies)-1))] }
	fmt.Printf("reviews=%d failures=%d elapsed=%s rate=%.0f/s p50=%s p90=%s p99=%s max=%s\n",
		len(latencies), failures, elapsed.Round(time.Millisecond), float64(len(latencies))/elapsed.Seconds(),
		pct(0.50), pct(0.90), pct(0.99), latencies[len(latencies)-1])
}
