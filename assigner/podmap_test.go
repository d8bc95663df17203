package assigner

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

func req(name string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "default", Name: name}}
}

func TestAddAhead(t *testing.T) {
	tests := []struct {
		name  string
		queue func() workqueue.TypedRateLimitingInterface[reconcile.Request]
		// queued by pod events before the record's change; the record's
		// change then concerns ahead.
		queued, ahead []string
		want          []string
	}{
		{
			name: "priority queue: a record's pods overtake pod events, keeping their order",
			queue: func() workqueue.TypedRateLimitingInterface[reconcile.Request] {
				return priorityqueue.New[reconcile.Request]("test")
			},
			queued: []string{"p1", "p2", "p3", "p4"},
			ahead:  []string{"p5", "p6"},
			want:   []string{"p5", "p6", "p1", "p2", "p3", "p4"},
		},
		{
			name: "priority queue: a pod already queued is raised, not queued twice",
			queue: func() workqueue.TypedRateLimitingInterface[reconcile.Request] {
				return priorityqueue.New[reconcile.Request]("test")
			},
			queued: []string{"p1", "p2", "p3"},
			ahead:  []string{"p3", "p4"},
			want:   []string{"p3", "p4", "p1", "p2"},
		},
		{
			name: "priority queue: the oldest go first though the newest are still queued from their creation",
			queue: func() workqueue.TypedRateLimitingInterface[reconcile.Request] {
				return priorityqueue.New[reconcile.Request]("test")
			},
			queued: []string{"p7", "p8"},
			ahead:  []string{"p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"},
			want:   []string{"p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"},
		},
		{
			name: "plain queue: in order, after what is queued",
			queue: func() workqueue.TypedRateLimitingInterface[reconcile.Request] {
				return workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
			},
			queued: []string{"p1", "p2"},
			ahead:  []string{"p3", "p2"},
			want:   []string{"p1", "p2", "p3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := tt.queue()
			defer q.ShutDown()
			for _, n := range tt.queued {
				q.Add(req(n))
			}
			var ahead []reconcile.Request
			for _, n := range tt.ahead {
				ahead = append(ahead, req(n))
			}
			addAhead(q, ahead)
			var got []string
			for q.Len() > 0 {
				r, _ := q.Get()
				got = append(got, r.Name)
				q.Done(r)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("dequeued %v, want %v", got, tt.want)
			}
		})
	}
}

func TestOlderFirst(t *testing.T) {
	second := metav1.NewTime(time.Date(2026, 12, 6, 21, 0, 0, 0, time.UTC))
	next := metav1.NewTime(second.Add(time.Second))
	pod := func(name string, created metav1.Time, rv string) queuedPod {
		return queuedPod{name: types.NamespacedName{Name: name}, created: created, resourceVersion: rv}
	}
	tests := []struct {
		name string
		pods []queuedPod
		want []string
	}{
		{
			name: "earlier second first, whatever the resourceVersion",
			pods: []queuedPod{pod("b", next, "5"), pod("a", second, "900")},
			want: []string{"a", "b"},
		},
		{
			name: "same second: by resourceVersion as a number, not as text",
			pods: []queuedPod{pod("c", second, "1000"), pod("b", second, "999"), pod("a", second, "998")},
			want: []string{"a", "b", "c"},
		},
		{
			name: "same second, malformed resourceVersion: left in place",
			pods: []queuedPod{pod("x", second, "abc"), pod("y", second, "7")},
			want: []string{"x", "y"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pods := slices.Clone(tt.pods)
			slices.SortStableFunc(pods, olderFirst)
			var got []string
			for _, p := range pods {
				got = append(got, p.name.Name)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("order %v, want %v", got, tt.want)
			}
		})
	}
}
