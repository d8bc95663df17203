package identity

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/objects"
)

func TestResolve(t *testing.T) {
	ids := []aadv1.AzureIdentity{
		objects.AzureIdentity("default", "demo", aadv1.UserAssignedMSI, "c-demo"),
		objects.AzureIdentity("default", "sp", aadv1.ServicePrincipal, "c-sp"),
		objects.AzureIdentity("other", "demo", aadv1.UserAssignedMSI, "c-other"),
		objects.AzureIdentity("default", "fed", aadv1.UserAssignedMSI, "c-fed"),
	}
	ids[3].Annotations = map[string]string{aadv1.AnnotationFederated: "true"}
	tests := []struct {
		name       string
		namespace  string
		selector   string
		bindings   []aadv1.AzureIdentityBinding
		cross      bool
		federated  bool     // policy mode federated
		want       []string // keys
		wantIDs    string
		dangling   []string
		assignment bool
	}{
		{name: "walkthrough binding", namespace: "default", selector: "demo",
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("default", "demo-binding", "demo", "demo")},
			want:     []string{"default/demo"}, wantIDs: "c-demo", assignment: true},
		{name: "empty selector resolves nothing", namespace: "default", selector: "",
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("default", "b", "demo", "demo")}},
		{name: "other selector", namespace: "default", selector: "nope",
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("default", "b", "demo", "demo")}},
		{name: "binding in another namespace is ignored by default", namespace: "default", selector: "demo",
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("other", "b", "demo", "demo")}},
		{name: "binding in another namespace with cross-namespace", namespace: "default", selector: "demo", cross: true,
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("other", "b", "demo", "demo")},
			want:     []string{"other/demo"}, wantIDs: "c-other", assignment: true},
		{name: "binding naming a missing identity is dangling", namespace: "default", selector: "demo",
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("default", "b", "ghost", "demo")},
			dangling: []string{"default/b"}},
		{name: "service principal needs no assignment", namespace: "default", selector: "sp",
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("default", "b", "sp", "sp")},
			want:     []string{"default/sp"}, wantIDs: "c-sp"},
		{name: "several bindings sorted and deduplicated", namespace: "default", selector: "both",
			bindings: []aadv1.AzureIdentityBinding{
				objects.Binding("default", "b1", "sp", "both"), objects.Binding("default", "b2", "demo", "both"), objects.Binding("default", "b3", "demo", "both")},
			want: []string{"default/demo", "default/sp"}, wantIDs: "c-demo,c-sp", assignment: true},
		{name: "an identity annotated federated needs no assignment", namespace: "default", selector: "fed",
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("default", "b", "fed", "fed")},
			want:     []string{"default/fed"}, wantIDs: "c-fed"},
		{name: "a federated identity beside a standard one", namespace: "default", selector: "mixed",
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("default", "b1", "fed", "mixed"), objects.Binding("default", "b2", "demo", "mixed")},
			want:     []string{"default/demo", "default/fed"}, wantIDs: "c-demo,c-fed", assignment: true},
		{name: "mode federated: no user-assigned identity needs assignment", namespace: "default", selector: "demo", federated: true,
			bindings: []aadv1.AzureIdentityBinding{objects.Binding("default", "demo-binding", "demo", "demo")},
			want:     []string{"default/demo"}, wantIDs: "c-demo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Resolve(tt.namespace, tt.selector, tt.bindings, ids, tt.cross, tt.federated)
			var got []string
			for _, id := range res.Identities {
				got = append(got, id.Key().String())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("identities (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.dangling, res.Dangling); diff != "" {
				t.Errorf("dangling (-want +got):\n%s", diff)
			}
			if got := res.Annotations()[aadv1.AnnotationClientIDs]; got != tt.wantIDs {
				t.Errorf("client-ids = %q, want %q", got, tt.wantIDs)
			}
			if got := res.NeedsAssignment(); got != tt.assignment {
				t.Errorf("NeedsAssignment = %v, want %v", got, tt.assignment)
			}
		})
	}
}

// A binding created together with the pod may not be in the cache yet: the
// resolver must fall back to a live read.
func TestResolverFallsBackToLiveRead(t *testing.T) {
	id := objects.AzureIdentity("default", "demo", aadv1.UserAssignedMSI, "c-demo")
	b := objects.Binding("default", "demo-binding", "demo", "demo")
	empty := newFakeClient(t)
	live := newFakeClient(t, &id, &b)

	r := &Resolver{Cache: empty, Live: live}
	res, err := r.Resolve(context.Background(), "default", "demo")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Identities) != 1 || res.Identities[0].Key().String() != "default/demo" {
		t.Fatalf("identities = %+v, want default/demo from the live read", res.Identities)
	}
}

func newFakeClient(t testing.TB, objs ...client.Object) client.Client {
	t.Helper()
	return fake.NewClientBuilder().WithScheme(Scheme()).WithObjects(objs...).
		WithIndex(&aadv1.AzureIdentityBinding{}, BindingSelectorIndex, IndexBindingSelector).Build()
}
