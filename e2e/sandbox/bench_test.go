//go:build e2e

package sandbox_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// BenchmarkPodStartup100 measures the sandbox's own share of every e2e
// figure: from creating 100 pods (50 per node) to all of them Running with
// their IP, and to all deleted with their namespaces gone. Figures and
// command in docs/performance.md, section "Sandbox".
func BenchmarkPodStartup100(b *testing.B) {
	_, c := startSandbox(b)
	ctx := context.Background()
	for b.Loop() {
		start := time.Now()
		var wg sync.WaitGroup
		for i := range 100 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pod := shPod(fmt.Sprintf("bench-%d", i), "sleep 600")
				if _, err := c.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		framework.Eventually(b, 5*time.Minute, "100 pods running", func() error {
			pods, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			running := 0
			for _, p := range pods.Items {
				if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
					running++
				}
			}
			if running != 100 {
				return fmt.Errorf("%d running", running)
			}
			return nil
		})
		b.ReportMetric(time.Since(start).Seconds(), "s-to-100-running")
		del := time.Now()
		if err := c.CoreV1().Pods("default").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			b.Fatal(err)
		}
		framework.Eventually(b, 5*time.Minute, "every pod deleted", func() error {
			pods, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
			if err == nil && len(pods.Items) > 0 {
				err = fmt.Errorf("%d pods left", len(pods.Items))
			}
			return err
		})
		b.ReportMetric(time.Since(del).Seconds(), "s-to-100-deleted")
	}
}
