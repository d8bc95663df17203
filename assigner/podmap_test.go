package assigner

import (
	"slices"
	"testing"

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
