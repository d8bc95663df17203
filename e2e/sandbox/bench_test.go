package sandbox_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
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
		waitAll(b, func() (bool, error) {
			pods, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			running := 0
			for _, p := range pods.Items {
				if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
					running++
				}
			}
			return running == 100, nil
		})
		b.ReportMetric(time.Since(start).Seconds(), "s-to-100-running")
		del := time.Now()
		if err := c.CoreV1().Pods("default").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			b.Fatal(err)
		}
		waitAll(b, func() (bool, error) {
			pods, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
			return err == nil && len(pods.Items) == 0, nil
		})
		b.ReportMetric(time.Since(del).Seconds(), "s-to-100-deleted")
	}
}

func waitAll(b *testing.B, f func() (bool, error)) {
	b.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 5*time.Minute, true, func(context.Context) (bool, error) { return f() })
	if err != nil {
		b.Fatal(err)
	}
}
