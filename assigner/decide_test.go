package assigner

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// rec is a record of identity name (resource ID uami(i)) on testPool.
type rec struct {
	name     string
	i        int
	state    aadv1.AssignmentState
	external bool
	// preexisting: adopted from aad-pod-identity 1.x's record.
	preexisting bool
	since       time.Duration // > 0: unneeded since t0 - since
	// The AzureIdentity was edited since the record was made: it names
	// another client ID, or resource uami(nowI).
	editedClient bool
	nowI         int
}

func stateOf(wanted []string, onPool []int, recs ...rec) *poolState {
	s := &poolState{pool: testPool, wanted: map[types.NamespacedName]*wantedIdentity{}, entries: map[types.NamespacedName]*aadv1.IdentityAssignment{}}
	for _, name := range wanted {
		s.wanted[types.NamespacedName{Namespace: "ns", Name: name}] = &wantedIdentity{pods: 1}
	}
	for _, r := range recs {
		key := types.NamespacedName{Namespace: "ns", Name: r.name}
		a := &aadv1.IdentityAssignment{
			AzureIdentityRef: aadv1.IdentityReference{Namespace: key.Namespace, Name: key.Name},
			ClientID:         "client-" + r.name, ResourceID: uami(r.i), State: r.state, External: r.external,
			Preexisting: r.preexisting,
		}
		if r.since > 0 {
			a.UnneededSince = &metav1.MicroTime{Time: t0.Add(-r.since)}
		}
		s.entries[key] = a
		if w := s.wanted[key]; w != nil {
			w.identity.Spec.ClientID, w.identity.Spec.ResourceID = a.ClientID, a.ResourceID
			if r.editedClient {
				w.identity.Spec.ClientID += "-new"
			}
			if r.nowI > 0 {
				w.identity.Spec.ResourceID = uami(r.nowI)
			}
		}
	}
	var ids []string
	for _, i := range onPool {
		ids = append(ids, uami(i))
	}
	s.actual = actualOf(false, ids...)
	return s
}

func TestDecide(t *testing.T) {
	const grace, drift = 5 * time.Minute, time.Hour
	pol := poolPolicy{grace: grace, drift: drift, immutable: map[string]bool{strings.ToLower(uami(9)): true}}
	type want struct {
		add, remove, mark, clear, drop, repair []string
		requeue                                time.Duration
	}
	tests := []struct {
		name        string
		state       *poolState
		retryFailed bool
		grace       time.Duration // 0: the policy's
		want        want
	}{
		{
			name:  "wanted identity missing from the pool is added",
			state: stateOf([]string{"a", "b"}, []int{2}, rec{name: "a", i: 1, state: aadv1.StateAssigning}, rec{name: "b", i: 2, state: aadv1.StateAssigned}),
			want:  want{add: []string{"a"}, requeue: drift},
		},
		{
			name:  "vanished identity is added again (drift)",
			state: stateOf([]string{"a"}, nil, rec{name: "a", i: 1, state: aadv1.StateAssigned}),
			want:  want{add: []string{"a"}, requeue: drift},
		},
		{
			name:  "refused identity waits for its retry without holding back the others",
			state: stateOf([]string{"bad", "good"}, nil, rec{name: "bad", i: 1, state: aadv1.StateFailed}, rec{name: "good", i: 2, state: aadv1.StateAssigning}),
			want:  want{add: []string{"good"}, requeue: drift},
		},
		{
			name:        "refused identity retried once the drift period is due",
			state:       stateOf([]string{"bad", "good"}, nil, rec{name: "bad", i: 1, state: aadv1.StateFailed}, rec{name: "good", i: 2, state: aadv1.StateAssigning}),
			retryFailed: true,
			want:        want{add: []string{"bad", "good"}, requeue: drift},
		},
		{
			name:  "wanted again: the grace period ends",
			state: stateOf([]string{"a"}, []int{1}, rec{name: "a", i: 1, state: aadv1.StateAssigned, since: time.Minute}),
			want:  want{clear: []string{"a"}, requeue: drift},
		},
		{
			name:  "no longer wanted: the grace period starts",
			state: stateOf(nil, []int{1}, rec{name: "a", i: 1, state: aadv1.StateAssigned}),
			want:  want{mark: []string{"a"}, requeue: grace},
		},
		{
			name:  "within the grace period: kept, requeued for its end",
			state: stateOf(nil, []int{1}, rec{name: "a", i: 1, state: aadv1.StateAssigned, since: time.Minute}, rec{name: "b", i: 2, state: aadv1.StateAssigned, since: 3 * time.Minute}),
			want:  want{requeue: 2 * time.Minute},
		},
		{
			name:  "grace period over: owned identity removed",
			state: stateOf(nil, []int{1}, rec{name: "a", i: 1, state: aadv1.StateAssigned, since: grace}),
			want:  want{remove: []string{"a"}, requeue: drift},
		},
		{
			name: "grace period over: external, immutable or vanished identities only lose their record",
			state: stateOf(nil, []int{1, 9}, rec{name: "ext", i: 1, state: aadv1.StateAssigned, external: true, since: time.Hour},
				rec{name: "imm", i: 9, state: aadv1.StateAssigned, since: time.Hour}, rec{name: "gone", i: 3, state: aadv1.StateAssigned, since: time.Hour}),
			want: want{drop: []string{"ext", "gone", "imm"}, requeue: drift},
		},
		{
			name:  "grace period over: an identity adopted from 1.x stays on the pool",
			state: stateOf(nil, []int{1}, rec{name: "adopted", i: 1, state: aadv1.StateAssigned, preexisting: true, since: time.Hour}),
			want:  want{drop: []string{"adopted"}, requeue: drift},
		},
		{
			name: "grace period over: a second AzureIdentity on an identity adopted from 1.x does not remove it",
			state: stateOf(nil, []int{1}, rec{name: "adopted", i: 1, state: aadv1.StateAssigned, preexisting: true, since: time.Minute},
				rec{name: "alias", i: 1, state: aadv1.StateAssigned, since: time.Hour}),
			want: want{drop: []string{"alias"}, requeue: 4 * time.Minute},
		},
		{
			name:  "edited resource ID, the old one adopted from 1.x: only the entry goes",
			state: stateOf([]string{"a"}, []int{1}, rec{name: "a", i: 1, state: aadv1.StateAssigned, preexisting: true, nowI: 2}),
			want:  want{drop: []string{"a"}, requeue: time.Millisecond},
		},
		{
			name:  "grace period over, but another record wants the same resource: only the record goes",
			state: stateOf([]string{"alias"}, []int{1}, rec{name: "alias", i: 1, state: aadv1.StateAssigned}, rec{name: "a", i: 1, state: aadv1.StateAssigned, since: time.Hour}),
			want:  want{drop: []string{"a"}, requeue: drift},
		},
		{
			name:  "edited client ID, same resource on the pool: re-paired in place",
			state: stateOf([]string{"a"}, []int{1}, rec{name: "a", i: 1, state: aadv1.StateFailed, editedClient: true}),
			want:  want{repair: []string{"a"}, requeue: drift},
		},
		{
			name:  "edited client ID, resource gone from the pool: re-paired and added",
			state: stateOf([]string{"a"}, nil, rec{name: "a", i: 1, state: aadv1.StateAssigned, editedClient: true}),
			want:  want{add: []string{"a"}, repair: []string{"a"}, requeue: drift},
		},
		{
			name:  "edited resource ID: the old resource is removed at once, without grace period",
			state: stateOf([]string{"a"}, []int{1}, rec{name: "a", i: 1, state: aadv1.StateAssigned, nowI: 2}),
			want:  want{remove: []string{"a"}, requeue: time.Millisecond},
		},
		{
			name:  "edited resource ID, the old one still wanted by another entry: only the entry goes",
			state: stateOf([]string{"a", "b"}, []int{1}, rec{name: "a", i: 1, state: aadv1.StateAssigned, nowI: 2}, rec{name: "b", i: 1, state: aadv1.StateAssigned}),
			want:  want{drop: []string{"a"}, requeue: time.Millisecond},
		},
		{
			name:  "edited resource ID, the old one external: only the entry goes",
			state: stateOf([]string{"a"}, []int{1}, rec{name: "a", i: 1, state: aadv1.StateAssigned, external: true, nowI: 2}),
			want:  want{drop: []string{"a"}, requeue: time.Millisecond},
		},
		{
			name:  "edited resource ID, now the resource another entry holds: the old one is removed",
			state: stateOf([]string{"a", "b"}, []int{1, 2}, rec{name: "a", i: 1, state: aadv1.StateAssigned, nowI: 2}, rec{name: "b", i: 2, state: aadv1.StateAssigned}),
			want:  want{remove: []string{"a"}, requeue: time.Millisecond},
		},
		{
			name:  "a grace period longer than the drift period: requeued for the drift check",
			state: stateOf(nil, []int{1}, rec{name: "a", i: 1, state: aadv1.StateAssigned, since: time.Minute}),
			grace: 2 * drift,
			want:  want{requeue: drift},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pol := pol
			if tc.grace > 0 {
				pol.grace = tc.grace
			}
			p := decide(tc.state, pol, t0, tc.retryFailed)
			got := want{add: names(p.add), remove: names(p.remove), mark: names(p.markUnneeded), clear: names(p.clearUnneeded), drop: names(p.drop), repair: names(p.repair), requeue: p.requeueAfter}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("plan %+v\nwant %+v", got, tc.want)
			}
			if !p.unneededSince.Equal(t0) {
				t.Errorf("grace periods start at %s, want now", p.unneededSince)
			}
		})
	}
}

func names(entries []*aadv1.IdentityAssignment) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.AzureIdentityRef.Name)
	}
	slices.Sort(out)
	return out
}

// A pool is settled when every wanted identity is recorded Assigned and no
// record waits for removal.
func TestInPlace(t *testing.T) {
	tests := []struct {
		name  string
		state *poolState
		want  bool
	}{
		{name: "all assigned", state: stateOf([]string{"a", "b"}, nil, rec{name: "a", i: 1, state: aadv1.StateAssigned}, rec{name: "b", i: 2, state: aadv1.StateAssigned}), want: true},
		{name: "an identity without record", state: stateOf([]string{"a", "b"}, nil, rec{name: "a", i: 1, state: aadv1.StateAssigned})},
		{name: "a record still assigning", state: stateOf([]string{"a"}, nil, rec{name: "a", i: 1, state: aadv1.StateAssigning})},
		{name: "a refused identity", state: stateOf([]string{"a"}, nil, rec{name: "a", i: 1, state: aadv1.StateFailed})},
		{name: "a record no pod wants", state: stateOf([]string{"a"}, nil, rec{name: "a", i: 1, state: aadv1.StateAssigned}, rec{name: "b", i: 2, state: aadv1.StateAssigned})},
		{name: "an edited identity", state: stateOf([]string{"a"}, nil, rec{name: "a", i: 1, state: aadv1.StateAssigned, editedClient: true})},
		{name: "a grace period to end", state: stateOf([]string{"a"}, nil, rec{name: "a", i: 1, state: aadv1.StateAssigned, since: time.Minute})},
	}
	for _, tc := range tests {
		if got := tc.state.inPlace(); got != tc.want {
			t.Errorf("%s: inPlace %v, want %v", tc.name, got, tc.want)
		}
	}
}
