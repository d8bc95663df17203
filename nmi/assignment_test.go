package nmi

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// A user-assigned identity is served only while the entry for it in the
// assigner's record of this node's pool vouches for it. The pairing case is
// the attack: an AzureIdentity naming another identity's client ID
// (client-b, on the pool for someone else) with a resource ID of its own;
// ARM reports another client ID for that resource, so the assigner marked
// the entry Failed.
func TestServedOnlyWhatTheAssignerVouchesFor(t *testing.T) {
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=r"
	rid := "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mine"
	other := testPool
	other.Name = "other"
	// entry edits the identity's entry in the pool's record.
	entry := func(edit func(*aadv1.IdentityAssignment)) func(*aadv1.AzureAssignedIdentity) {
		return func(r *aadv1.AzureAssignedIdentity) { edit(r.Status.Find("ns", "mine")) }
	}
	tests := []struct {
		name     string
		clientID string
		// record edits the pool's record, which holds an Assigned entry for
		// the identity and one for another identity on the pool.
		record   func(*aadv1.AzureAssignedIdentity)
		external bool // policy.serveExternalIdentities
		status   int
		want     string
	}{
		{"assigned by the assigner", "client-a", func(*aadv1.AzureAssignedIdentity) {}, false, 200, "tok-client-a"},
		{"no record of this node's pool, only another pool's", "client-a", func(r *aadv1.AzureAssignedIdentity) {
			r.Name, r.Spec.NodePool = identity.RecordName(other), other.ID()
		}, false, 403, "has not been assigned to this node's pool"},
		{"the pool's record has no entry for it", "client-a", func(r *aadv1.AzureAssignedIdentity) {
			r.Status.Identities = slices.DeleteFunc(r.Status.Identities, func(e aadv1.IdentityAssignment) bool { return e.AzureIdentityRef.Name == "mine" })
		}, false, 403, "has not been assigned to this node's pool"},
		{"still assigning", "client-a", entry(func(e *aadv1.IdentityAssignment) { e.State = aadv1.StateAssigning }), false, 403, "has not been assigned|is not assigned"},
		{"client ID of another identity on the pool", "client-b", entry(func(e *aadv1.IdentityAssignment) {
			e.State, e.LastError = aadv1.StateFailed, `ARM reports client ID "client-mine" for identity `+rid+`, but the AzureIdentity names client ID client-b`
		}), false, 403, "AzureIdentity ns/mine could not be assigned to this node's pool (identity_assignment_failed)"},
		{"was on the pool before the assigner", "client-a", entry(func(e *aadv1.IdentityAssignment) { e.External = true }), false, 403, "identity_not_ours|policy.serveExternalIdentities"},
		{"external, served by choice", "client-a", entry(func(e *aadv1.IdentityAssignment) { e.External = true }), true, 200, "tok-client-a"},
		{"client ID edited after assignment", "client-a", entry(func(e *aadv1.IdentityAssignment) { e.ClientID = "client-b" }), false, 403, "different clientID or resourceID"},
		// An earlier single-identity record (0.1's, one per identity and
		// pool) is read only by the assigner, to take it over: its fields
		// vouch for nothing, even under the pool record's own name.
		{"only the fields of a single-identity record say Assigned", "client-a", func(r *aadv1.AzureAssignedIdentity) {
			r.Spec = aadv1.AzureAssignedIdentitySpec{NodePool: r.Spec.NodePool, LegacyRecordSpec: aadv1.LegacyRecordSpec{
				LegacyIdentityRef: &aadv1.LegacyIdentityReference{Namespace: "ns", Name: "mine"}, LegacyClientID: "client-a", LegacyResourceID: rid}}
			r.Status = aadv1.AzureAssignedIdentityStatus{LegacyRecordStatus: aadv1.LegacyRecordStatus{LegacyStatus: aadv1.StateAssigned}}
		}, false, 403, "has not been assigned to this node's pool"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := azureIdentity("mine", tc.clientID, rid)
			neighbour := azureIdentity("neighbour", "client-b", "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/neighbour")
			rec := poolRecord(testPool, assignedEntry(&id), assignedEntry(&neighbour))
			tc.record(rec)
			objs := []client.Object{&id, binding("ns", "bind", "sel", "mine"), pod("a", "10.0.0.1", admitted("ns/mine")), rec}
			f := newFixture(t, objs...)
			f.server.assignments.allowExternal = tc.external
			got := f.do(t, "10.0.0.1", tok, true)
			if got.Code != tc.status || !containsAny(got.Body.String(), tc.want) {
				t.Fatalf("got %d %s; want %d containing %q", got.Code, got.Body, tc.status, tc.want)
			}
			if tc.status != 200 && f.imds.calls.Load() != 0 {
				t.Fatalf("IMDS was asked for a token NMI refused")
			}
		})
	}
}

// ARM's answer in a Failed entry can name another identity's client ID and
// the assigner's principal and scopes: the pod gets a stable reason and its
// AzureIdentity, not the text (the record and the assigner's log keep it).
func TestFailedAssignmentKeepsARMTextFromThePod(t *testing.T) {
	const (
		foreignClientID = "5e1ec7ed-0000-4000-8000-00000000f00d"
		principal       = "9a551e00-0000-4000-8000-0000000000aa"
		scope           = "/subscriptions/s/resourceGroups/other-team"
	)
	id := azureIdentity("mine", "client-a", "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mine")
	e := assignedEntry(&id)
	e.State = aadv1.StateFailed
	e.LastError = `ARM reports client ID "` + foreignClientID + `" for identity ` + id.Spec.ResourceID + `; ARM 403 AuthorizationFailed: The client '` + principal +
		`' does not have authorization to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' over scope '` + scope + `'`
	f := newFixture(t, &id, binding("ns", "bind", "sel", "mine"), pod("a", "10.0.0.1", admitted("ns/mine")), poolRecord(testPool, e))
	rec := f.do(t, "10.0.0.1", "/metadata/identity/oauth2/token?api-version=1&resource=r", true)
	body := rec.Body.String()
	if rec.Code != http.StatusForbidden || !strings.Contains(body, "identity_assignment_failed") || !strings.Contains(body, "AzureIdentity ns/mine") {
		t.Fatalf("got %d %s; want 403 naming identity_assignment_failed and AzureIdentity ns/mine", rec.Code, body)
	}
	for _, secret := range []string{foreignClientID, principal, scope, "AuthorizationFailed"} {
		if strings.Contains(body, secret) {
			t.Errorf("the answer carries ARM's %q: %s", secret, body)
		}
	}
}

// containsAny reports whether s contains one of the |-separated substrings.
func containsAny(s, subs string) bool {
	for _, sub := range strings.Split(subs, "|") {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// The pool comes from the node's provider ID; a node without one (not yet
// set by the cloud node manager) serves no user-assigned identity until it
// has one.
func TestNodePoolFromProviderID(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}
	c := newClient(t, node)
	a := &assignments{nodes: c, nodeName: "n", records: c, namespace: recordsNS, wait: time.Millisecond}
	ctx := t.Context()
	if _, err := a.nodePool(ctx); err == nil || !strings.Contains(err.Error(), "node_pool_unknown") {
		t.Fatalf("node without provider ID: err = %v", err)
	}
	node.Spec.ProviderID = "azure://" + testPool.ID() + "/virtualMachines/3"
	if err := c.Update(ctx, node); err != nil {
		t.Fatal(err)
	}
	got, err := a.nodePool(ctx)
	if err != nil || got.Key() != testPool.Key() {
		t.Fatalf("pool %q, %v; want %q", got.ID(), err, testPool.ID())
	}
}

// NMI caches only its pool's record when the node names its pool at
// startup (a record holds all of a pool's identities, and there is one per
// pool); otherwise every record of the namespace, to find its pool's once
// the provider ID is set.
func TestRecordCacheConfig(t *testing.T) {
	withID := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Spec: corev1.NodeSpec{ProviderID: "azure://" + testPool.ID() + "/virtualMachines/3"}}
	cfg, pool, whole := recordCacheConfig(recordsNS, withID, nil)
	if whole != nil || pool == nil || pool.Key() != testPool.Key() {
		t.Fatalf("node with provider ID: pool %v, whole-namespace reason %v; want %s", pool, whole, testPool.ID())
	}
	if _, ok := cfg.Namespaces[recordsNS]; !ok || len(cfg.Namespaces) != 1 {
		t.Errorf("namespaces %v; want %s only", cfg.Namespaces, recordsNS)
	}
	name := identity.RecordName(testPool)
	if cfg.Field == nil || cfg.Field.String() != "metadata.name="+name {
		t.Fatalf("field selector %v; want metadata.name=%s", cfg.Field, name)
	}
	other := testPool
	other.Name = "other"
	if !cfg.Field.Matches(fields.Set{"metadata.name": name}) || cfg.Field.Matches(fields.Set{"metadata.name": identity.RecordName(other)}) {
		t.Error("the selector does not pick this pool's record alone")
	}

	for _, tc := range []struct {
		name    string
		node    *corev1.Node
		err     error
		because string
	}{
		{"node not readable", nil, errors.New("reading node n: forbidden"), "forbidden"},
		{"no provider ID yet", &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}, nil, "node n"},
		{"not an Azure provider ID", &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Spec: corev1.NodeSpec{ProviderID: "kind://docker/kind/kind-worker"}}, nil, "node n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, pool, whole := recordCacheConfig(recordsNS, tc.node, tc.err)
			if pool != nil || whole == nil || !strings.Contains(whole.Error(), tc.because) {
				t.Fatalf("pool %v, reason %v; want the whole namespace because of %q", pool, whole, tc.because)
			}
			if _, ok := cfg.Namespaces[recordsNS]; !ok || len(cfg.Namespaces) != 1 || cfg.Field != nil || cfg.Label != nil {
				t.Errorf("config %+v; want all of namespace %s", cfg, recordsNS)
			}
		})
	}
}
