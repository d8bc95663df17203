package assigner

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

func TestBatchWait(t *testing.T) {
	pool := Pool{Subscription: "s", ResourceGroup: "rg", Kind: KindVMSS, Name: "p"}
	one := map[types.NamespacedName]*need{{Namespace: "ns", Name: "a"}: {pods: 1}}
	two := map[types.NamespacedName]*need{{Namespace: "ns", Name: "a"}: {pods: 1}, {Namespace: "ns", Name: "b"}: {pods: 1}}
	recorded := map[types.NamespacedName]*aadv1.AzureAssignedIdentity{{Namespace: "ns", Name: "a"}: {}, {Namespace: "ns", Name: "b"}: {}}
	t0 := time.Unix(1000, 0)
	ms := time.Millisecond
	r := &poolReconciler{batch: time.Second, newWork: map[string]batchWindow{}} // quiet period 200ms
	steps := []struct {
		name    string
		at      time.Duration
		needs   map[types.NamespacedName]*need
		records map[types.NamespacedName]*aadv1.AzureAssignedIdentity
		unseen  bool
		want    time.Duration
	}{
		{name: "first new identity: wait for a quiet period", at: 0, needs: one, want: 200 * ms},
		{name: "same identities: the quiet period runs on", at: 50 * ms, needs: one, want: 150 * ms},
		{name: "another identity restarts the quiet period", at: 100 * ms, needs: two, want: 200 * ms},
		{name: "quiet period over: write", at: 300 * ms, needs: two, want: 0},
		{name: "next new identity opens a new window", at: 2 * time.Second, needs: one, want: 200 * ms},
		{name: "new identities keep coming", at: 2150 * ms, needs: two, want: 200 * ms},
		{name: "still coming", at: 2300 * ms, needs: one, want: 200 * ms},
		{name: "the window caps the wait", at: 2850 * ms, needs: two, want: 150 * ms},
		{name: "window over: write", at: 3 * time.Second, needs: two, want: 0},
		{name: "nothing new: write at once (drift, removals)", at: 3500 * ms, needs: two, records: recorded, want: 0},
		{name: "a pod not handled yet carries an unknown identity: wait for the window", at: 4 * time.Second, needs: one, unseen: true, want: time.Second},
		{name: "still unseen after the quiet period", at: 4300 * ms, needs: one, unseen: true, want: 700 * ms},
		{name: "seen: the quiet period is over, write", at: 4400 * ms, needs: one, want: 0},
	}
	for _, s := range steps {
		if got := r.batchWait(pool, s.needs, s.records, s.unseen, t0.Add(s.at)); got != s.want {
			t.Errorf("%s: wait %s, want %s", s.name, got, s.want)
		}
	}
	r.batch = 0
	if got := r.batchWait(pool, one, nil, true, t0); got != 0 {
		t.Errorf("no window: wait %s", got)
	}
}
