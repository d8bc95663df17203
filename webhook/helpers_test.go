package webhook

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

func azureIdentity(ns, name string, typ aadv1.IdentityType, clientID string) aadv1.AzureIdentity {
	return aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       aadv1.AzureIdentitySpec{Type: typ, ClientID: clientID},
	}
}

func binding(ns, name, identity, selector string) aadv1.AzureIdentityBinding {
	return aadv1.AzureIdentityBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector},
	}
}

// newResolver resolves against a fake client holding objs, as cache and
// live reader both.
func newResolver(t testing.TB, objs ...client.Object) *identity.Resolver {
	t.Helper()
	c := fake.NewClientBuilder().WithScheme(identity.Scheme()).WithObjects(objs...).
		WithIndex(&aadv1.AzureIdentityBinding{}, identity.BindingSelectorIndex, identity.IndexBindingSelector).Build()
	return &identity.Resolver{Cache: c, Live: c}
}
