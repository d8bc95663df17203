package nmi

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// A user-assigned identity is served only while the assigner's record
// vouches for it on this node's pool. The pairing case is the attack: an
// AzureIdentity naming another identity's client ID (client-b, on the pool
// for someone else) with a resource ID of its own; ARM reports another
// client ID for that resource, so the assigner marked the record Failed.
func TestServedOnlyWhatTheAssignerVouchesFor(t *testing.T) {
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=r"
	rid := "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mine"
	tests := []struct {
		name     string
		clientID string
		record   func(*aadv1.AzureAssignedIdentity) // nil: a record of another pool only
		external bool                               // --serve-external-identities
		status   int
		want     string
	}{
		{"assigned by the assigner", "client-a", func(*aadv1.AzureAssignedIdentity) {}, false, 200, "tok-client-a"},
		{"recorded on another pool only", "client-a", nil, false, 403, "has not been assigned to this node's pool"},
		{"still assigning", "client-a", func(r *aadv1.AzureAssignedIdentity) { r.Status.Status = aadv1.StateAssigning }, false, 403, "has not been assigned|is not assigned"},
		{"client ID of another identity on the pool", "client-b", func(r *aadv1.AzureAssignedIdentity) {
			r.Status = aadv1.AzureAssignedIdentityStatus{Status: aadv1.StateFailed, LastError: `ARM reports client ID "client-mine" for identity ` + rid + `, but the AzureIdentity names client ID client-b`}
		}, false, 403, `ARM reports client ID \"client-mine\"`},
		{"was on the pool before the assigner", "client-a", func(r *aadv1.AzureAssignedIdentity) { r.Status.External = true }, false, 403, "identity_not_ours|--serve-external-identities"},
		{"external, served by choice", "client-a", func(r *aadv1.AzureAssignedIdentity) { r.Status.External = true }, true, 200, "tok-client-a"},
		{"client ID edited after assignment", "client-a", func(r *aadv1.AzureAssignedIdentity) { r.Spec.ClientID = "client-b" }, false, 403, "different clientID or resourceID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := azureIdentity("mine", tc.clientID, rid)
			objs := []client.Object{&id, binding("ns", "bind", "sel", "mine"), pod("a", "10.0.0.1", admitted("ns/mine"))}
			rec := assignedRecord(&id)
			if tc.record != nil {
				tc.record(rec)
			} else {
				other := testPool
				other.Name = "other"
				rec.Name, rec.Spec.NodePool = identity.AssignmentName(client.ObjectKeyFromObject(&id), other), other.ID()
			}
			objs = append(objs, rec)
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
