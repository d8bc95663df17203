package v1

import "testing"

// Find searches the entries in the order the assigner writes them:
// namespace, then name, so that "a" sorts before "a-b" although "a/" sorts
// after "a-b/".
func TestFind(t *testing.T) {
	refs := [][2]string{{"a", "x"}, {"a", "y"}, {"a-b", "a"}, {"b", "z"}}
	var st AzureAssignedIdentityStatus
	for _, r := range refs {
		st.Identities = append(st.Identities, IdentityAssignment{AzureIdentityRef: IdentityReference{Namespace: r[0], Name: r[1]}})
	}
	for _, r := range refs {
		if e := st.Find(r[0], r[1]); e == nil || e.AzureIdentityRef.Namespace != r[0] || e.AzureIdentityRef.Name != r[1] {
			t.Errorf("Find(%s, %s) = %+v", r[0], r[1], e)
		}
	}
	for _, r := range [][2]string{{"a", "z"}, {"a-b", "x"}, {"", ""}, {"c", "a"}, {"a/x", ""}} {
		if e := st.Find(r[0], r[1]); e != nil {
			t.Errorf("Find(%q, %q) = %+v, want none", r[0], r[1], e)
		}
	}
	if (&AzureAssignedIdentityStatus{}).Find("a", "x") != nil {
		t.Error("found an entry in an empty status")
	}
}
