package assigner

import (
	"context"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// legacyReaper deletes the per-pod AzureAssignedIdentities aad-pod-identity
// 1.x's MIC wrote (one per pod and identity, no node pool), which nothing
// here reads: left in place they would only mislead `kubectl get
// azureassignedidentities -A`. Deleting one touches no node pool, so no
// running pod loses an identity; the identities MIC assigned stay where
// they are (docs/migration.md).
type legacyReaper struct {
	client client.Client
}

// isLegacy reports whether a record is 1.x's: this assigner's records
// always name their pool.
func isLegacy(o client.Object) bool {
	rec, ok := o.(*aadv1.AzureAssignedIdentity)
	return ok && rec.Spec.NodePool == ""
}

func (r *legacyReaper) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var rec aadv1.AzureAssignedIdentity
	if err := r.client.Get(ctx, req.NamespacedName, &rec); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !isLegacy(&rec) {
		return ctrl.Result{}, nil
	}
	if err := r.client.Delete(ctx, &rec, client.Preconditions{UID: &rec.UID}); client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, fmt.Errorf("deleting aad-pod-identity 1.x's AzureAssignedIdentity %s: %w", req.NamespacedName, err)
	}
	log.FromContext(ctx).Info("deleted aad-pod-identity 1.x's per-pod AzureAssignedIdentity; no node pool was changed", "record", req.NamespacedName)
	return ctrl.Result{}, nil
}

// SetupWithManager registers the reaper for records without a node pool.
func (r *legacyReaper) SetupWithManager(mgr ctrl.Manager) error {
	err := ctrl.NewControllerManagedBy(mgr).Named("legacy-records").
		For(&aadv1.AzureAssignedIdentity{}, builder.WithPredicates(predicate.NewPredicateFuncs(isLegacy))).
		Complete(r)
	if err != nil {
		return fmt.Errorf("creating legacy record controller: %w", err)
	}
	return nil
}
