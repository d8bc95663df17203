package webhook

import (
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// newResolver resolves against a fake client holding objs, as cache and
// live reader both.
func newResolver(t testing.TB, objs ...client.Object) *identity.Resolver {
	t.Helper()
	c := fake.NewClientBuilder().WithScheme(identity.Scheme()).WithObjects(objs...).
		WithIndex(&aadv1.AzureIdentityBinding{}, identity.BindingSelectorIndex, identity.IndexBindingSelector).Build()
	return &identity.Resolver{Cache: c, Live: c}
}
