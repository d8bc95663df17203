package framework

import (
	"testing"
	"time"
)

// Eventually retries cond until it returns nil, and fails the test with its
// last error after timeout. It polls often at first and then every 250ms, so
// that quick changes are seen quickly and slow ones (kubectl, a rollout) are
// not hammered.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := 25 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(interval)
		interval = min(2*interval, 250*time.Millisecond)
	}
}
