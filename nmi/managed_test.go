package nmi

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// Managed mode: no assignment records; the pairing is checked on the
// token's xms_mirid, and an identity missing from the pool gets an answer
// naming the admin's command and one Warning event on the pod.
func TestManagedMode(t *testing.T) {
	const (
		resA       = "/subscriptions/s/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a"
		resKubelet = "/subscriptions/s/resourceGroups/mc/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kubelet"
	)
	good := azureIdentity("good", "client-a", resA)
	borrowed := azureIdentity("borrowed", "client-x", resA) // the kubelet's client ID, someone's resource
	unverified := azureIdentity("unverified", "client-b", "/subscriptions/s/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/b")
	missing := azureIdentity("missing", "client-z", "/subscriptions/s/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z")
	// The protected kubelet resource spelled with U+017F for s: another string to the protected list, and so to the pairing.
	twin := azureIdentity("twin", "client-x", strings.Replace(resKubelet, "/subscriptions/", "/\u017fubscriptions/", 1))
	objs := append(bindings("ns/good", "ns/borrowed", "ns/unverified", "ns/missing", "ns/twin"), &good, &borrowed, &unverified, &missing, &twin,
		pod("good", "10.0.0.1", admitted("ns/good")), pod("borrowed", "10.0.0.2", admitted("ns/borrowed")),
		pod("unverified", "10.0.0.3", admitted("ns/unverified")), pod("missing", "10.0.0.4", admitted("ns/missing")),
		pod("twin", "10.0.0.5", admitted("ns/twin")))
	f := newFixture(t, objs...)
	f.server.protected = identity.NewProtected([]string{resKubelet})
	// No assigner in managed mode: nothing NMI reads may come from records.
	if err := f.client.DeleteAllOf(context.Background(), &aadv1.AzureAssignedIdentity{}, client.InNamespace(recordsNS)); err != nil {
		t.Fatal(err)
	}
	f.imds.mirIDs = map[string]string{"client-a": resA, "client-x": resKubelet}
	recorder := events.NewFakeRecorder(10)
	f.server.mode = config.ModeManaged
	f.server.managed = &managedIdentities{recorder: recorder, reported: map[string]bool{},
		nodePool: func(context.Context) (nodepool.Pool, error) { return testPool, nil }}

	const target = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"
	for _, tc := range []struct {
		name, ip   string
		status     int
		contains   []string
		notContain string
	}{
		{name: "assigned by the admin, pairing confirmed by the token", ip: "10.0.0.1", status: http.StatusOK, contains: []string{"access_token"}},
		{name: "another identity's client ID next to one's own resource", ip: "10.0.0.2", status: http.StatusForbidden,
			contains: []string{"belongs to another identity than resource " + resA}, notContain: "kubelet"},
		{name: "the protected kubelet resource spelled with a Unicode look-alike", ip: "10.0.0.5", status: http.StatusForbidden,
			contains: []string{"belongs to another identity than resource /\u017fubscriptions/"}},
		{name: "a token that does not say its identity", ip: "10.0.0.3", status: http.StatusForbidden, contains: []string{"does not say which identity"}},
		{name: "not on the pool: the admin's command", ip: "10.0.0.4", status: http.StatusForbidden,
			contains: []string{"not assigned to VMSS pool in resource group g", "az vmss identity assign -g g -n pool --identities " + missing.Spec.ResourceID}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := f.do(t, tc.ip, target, true)
			if rec.Code != tc.status {
				t.Fatalf("got %d %s, want %d", rec.Code, rec.Body, tc.status)
			}
			for _, c := range tc.contains {
				if !strings.Contains(rec.Body.String(), c) {
					t.Errorf("answer %s lacks %q", rec.Body, c)
				}
			}
			if tc.notContain != "" && strings.Contains(rec.Body.String(), tc.notContain) {
				t.Errorf("answer %s names %q, which is not the caller's", rec.Body, tc.notContain)
			}
		})
	}
	// A second refusal of the same pod records no second event.
	f.do(t, "10.0.0.4", target, true)
	if n := len(recorder.Events); n != 1 {
		t.Fatalf("%d events, want 1", n)
	}
	if e := <-recorder.Events; !strings.HasPrefix(e, "Warning "+EventIdentityNotAssigned+" ") || !strings.Contains(e, "az vmss identity assign") {
		t.Errorf("event %q", e)
	}
}
