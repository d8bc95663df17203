package assigner

import (
	"context"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// 1.x's per-pod records (no node pool; read through today's CRD, whose
// schema prunes their other fields) are deleted; this assigner's are kept.
func TestLegacyRecordsDeleted(t *testing.T) {
	legacy := &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo-default-demo"}}
	ours := &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "sys", Name: "ours"},
		Spec: aadv1.AzureAssignedIdentitySpec{NodePool: testPool.ID(), ResourceID: uami(1), ClientID: clientIDOf(uami(1))}}
	c := fake.NewClientBuilder().WithScheme(identity.Scheme()).WithObjects(legacy, ours).Build()
	r := &legacyReaper{client: c}
	for _, o := range []client.Object{legacy, ours} {
		if _, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(legacy), &aadv1.AzureAssignedIdentity{}); !apierrors.IsNotFound(err) {
		t.Errorf("1.x's record: %v, want it deleted", err)
	}
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(ours), &aadv1.AzureAssignedIdentity{}); err != nil {
		t.Errorf("this assigner's record: %v, want it kept", err)
	}
	if got := recordToPool(context.Background(), legacy); got != nil {
		t.Errorf("1.x's record enqueues pool rounds %v", got)
	}
}
