package assigner

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func uami(i int) string {
	return fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id%d", i)
}

func uamis(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, uami(i))
	}
	return out
}

func actualOf(system bool, ids ...string) Actual {
	a := Actual{SystemAssigned: system, UserAssigned: map[string]string{}}
	for _, id := range ids {
		a.UserAssigned[strings.ToLower(id)] = clientIDOf(id)
	}
	return a
}

func TestPatches(t *testing.T) {
	tests := []struct {
		name   string
		actual Actual
		add    []string
		remove []string
		want   []Patch
	}{
		{name: "nothing to do", actual: actualOf(true, uami(1)), add: []string{uami(1)}, remove: []string{uami(2)}},
		{name: "first identity, no system", actual: actualOf(false), add: []string{uami(1)}, want: []Patch{{Type: TypeUserAssigned, Add: []string{uami(1)}}}},
		{name: "first identity keeps system", actual: actualOf(true), add: []string{uami(1)}, want: []Patch{{Type: TypeSystemAssignedUserAssigned, Add: []string{uami(1)}}}},
		{name: "foreign identity stays, only delta sent", actual: actualOf(false, uami(9)), add: []string{uami(1)}, want: []Patch{{Type: TypeUserAssigned, Add: []string{uami(1)}}}},
		{name: "last removed, system kept", actual: actualOf(true, uami(1)), remove: []string{uami(1)}, want: []Patch{{Type: TypeSystemAssigned, Remove: []string{uami(1)}}}},
		{name: "last removed, none left", actual: actualOf(false, uami(1)), remove: []string{uami(1)}, want: []Patch{{Type: TypeNone, Remove: []string{uami(1)}}}},
		{name: "remove one of two", actual: actualOf(false, uami(1), uami(2)), remove: []string{uami(1)}, want: []Patch{{Type: TypeUserAssigned, Remove: []string{uami(1)}}}},
		{name: "case-insensitive IDs", actual: actualOf(false, strings.ToLower(uami(1))), add: []string{uami(1)}, remove: []string{uami(1) + "X"}},
		{name: "add and remove together", actual: actualOf(false, uami(1)), add: []string{uami(2)}, remove: []string{uami(1)}, want: []Patch{{Type: TypeUserAssigned, Add: []string{uami(2)}, Remove: []string{uami(1)}}}},
		{name: "duplicates collapse", actual: actualOf(false), add: []string{uami(1), uami(1)}, want: []Patch{{Type: TypeUserAssigned, Add: []string{uami(1)}}}},
		{
			name: "chunks of 150, adds first", actual: actualOf(true, uamis(1000, 1010)...), add: uamis(0, 200), remove: uamis(1000, 1010),
			want: []Patch{
				{Type: TypeSystemAssignedUserAssigned, Add: uamis(0, 150)},
				{Type: TypeSystemAssignedUserAssigned, Add: uamis(150, 200), Remove: uamis(1000, 1010)},
			},
		},
		{
			name: "chunked removal of everything", actual: actualOf(false, uamis(0, 151)...), remove: uamis(0, 151),
			want: []Patch{{Type: TypeUserAssigned, Remove: uamis(0, 150)}, {Type: TypeNone, Remove: uamis(150, 151)}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Patches(tc.actual, tc.add, tc.remove)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Patches() = %+v\nwant %+v", got, tc.want)
			}
			for _, p := range got {
				if n := len(p.Add) + len(p.Remove); n > MaxIdentitiesPerRequest {
					t.Errorf("patch carries %d identities", n)
				}
			}
		})
	}
}
