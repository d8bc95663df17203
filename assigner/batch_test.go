package assigner

import (
	"testing"
	"time"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

func TestBatchWait(t *testing.T) {
	pool := Pool{Subscription: "s", ResourceGroup: "rg", Kind: KindVMSS, Name: "p"}
	needs := map[string]*need{"ns/a": {pods: 1}}
	recorded := map[string]*aadv1.AzureAssignedIdentity{"ns/a": {}}
	t0 := time.Unix(1000, 0)
	r := &poolReconciler{batch: time.Second, newWork: map[string]time.Time{}}
	steps := []struct {
		name    string
		at      time.Duration
		records map[string]*aadv1.AzureAssignedIdentity
		want    time.Duration
	}{
		{name: "first new identity opens the window", at: 0, want: time.Second},
		{name: "more pods inside the window wait for its end", at: 300 * time.Millisecond, want: 700 * time.Millisecond},
		{name: "window over: write", at: time.Second, want: 0},
		{name: "next new identity opens a new window", at: 2 * time.Second, want: time.Second},
		{name: "nothing new: write at once (drift, removals)", at: 2500 * time.Millisecond, records: recorded, want: 0},
	}
	for _, s := range steps {
		if got := r.batchWait(pool, needs, s.records, t0.Add(s.at)); got != s.want {
			t.Errorf("%s: wait %s, want %s", s.name, got, s.want)
		}
	}
	r.batch = 0
	if got := r.batchWait(pool, needs, nil, t0); got != 0 {
		t.Errorf("no window: wait %s", got)
	}
}
