package assigner

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/compat"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// aad-pod-identity 1.x's MIC wrote one AzureAssignedIdentity per pod and
// identity, naming the pod's node and embedding the AzureIdentity, without
// a node pool. Such a record, Assigned, is the evidence that MIC put the
// identity on that node's pool: the pool controller then records the
// identity as served (not external), as 1.x served it, but never removes it
// (preexisting). Whoever may write AzureAssignedIdentities in their own
// namespace can forge such a record, so evidence counts only when nothing
// but MIC could have written it for this pod and AzureIdentity (vouches).
// Once the evidence has been used, or can no longer be (its pod, node or
// status says MIC's assignment is over), the record is deleted; deleting
// one changes no node pool.

// legacyResourceIndex indexes 1.x's records by the lower-cased resource ID
// they embed.
const legacyResourceIndex = "legacy.resourceID"

// legacyRecheck is how often a 1.x record still waiting to be used as
// evidence is looked at again.
const legacyRecheck = 15 * time.Second

// isLegacy reports whether a record is 1.x's.
func isLegacy(o client.Object) bool {
	rec, ok := o.(*aadv1.AzureAssignedIdentity)
	if !ok {
		return false
	}
	_, ok = compat.Read1x(rec)
	return ok
}

func indexLegacyResource(o client.Object) []string {
	if r, ok := compat.Read1x(o.(*aadv1.AzureAssignedIdentity)); ok && r.ResourceID != "" {
		return []string{aadv1.IDKey(r.ResourceID)}
	}
	return nil
}

// evidence1x is what a 1.x record must match to vouch for an identity.
type evidence1x struct {
	pool       nodepool.Pool
	identity   types.NamespacedName // the AzureIdentity that wants the resource now
	resourceID string
	// before: the record must be older than this installation; a zero
	// time accepts none.
	before time.Time
}

// assignedBy1x returns the 1.x record that vouches for ev's resource on
// its pool, or nil.
func assignedBy1x(ctx context.Context, c client.Reader, ev evidence1x) (*aadv1.AzureAssignedIdentity, error) {
	if ev.before.IsZero() {
		return nil, nil
	}
	var list aadv1.AzureAssignedIdentityList
	if err := c.List(ctx, &list, client.InNamespace(ev.identity.Namespace), client.MatchingFields{legacyResourceIndex: aadv1.IDKey(ev.resourceID)}); err != nil {
		return nil, fmt.Errorf("listing aad-pod-identity 1.x's records: %w", err)
	}
	for i := range list.Items {
		rec := &list.Items[i]
		ok, err := vouches(ctx, c, rec, ev)
		if err != nil {
			return nil, err
		}
		if ok {
			return rec, nil
		}
	}
	return nil, nil
}

// vouches reports whether a 1.x record (of the AzureIdentity's namespace)
// is evidence for ev: written before this installation, Assigned, for the
// same AzureIdentity, for a live pod of that namespace that was admitted
// for it, on a node of the pool. A record written since, or for another
// object, is someone's own: it proves nothing about the pool.
func vouches(ctx context.Context, c client.Reader, rec *aadv1.AzureAssignedIdentity, ev evidence1x) (bool, error) {
	r, ok := compat.Read1x(rec)
	if !ok || r.State != aadv1.StateAssigned || !rec.CreationTimestamp.Time.Before(ev.before) ||
		r.Identity != ev.identity || r.Pod.Namespace != ev.identity.Namespace || r.Pod.Name == "" {
		return false, nil
	}
	var pod corev1.Pod
	if err := c.Get(ctx, r.Pod, &pod); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if !identity.Live(&pod) || pod.Labels[aadv1.BindingLabel] == "" || !slices.Contains(identity.Admitted(&pod), ev.identity) {
		return false, nil
	}
	p, err := nodePool(ctx, c, r.Node)
	return p != nil && p.Key() == ev.pool.Key(), err
}

// nodePool returns the pool of the node a 1.x record names; nil when the
// record names none, or the node is gone or not an Azure VM.
func nodePool(ctx context.Context, c client.Reader, name string) (*nodepool.Pool, error) {
	if name == "" {
		return nil, nil
	}
	var node corev1.Node
	if err := c.Get(ctx, client.ObjectKey{Name: name}, &node); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("getting node %s: %w", name, err)
	}
	p, err := nodepool.FromProviderID(node.Spec.ProviderID)
	if err != nil {
		return nil, nil
	}
	return &p, nil
}

// legacyReaper deletes 1.x's records once they are of no more use as
// evidence: left in place they would only mislead `kubectl get
// azureassignedidentities -A`.
type legacyReaper struct {
	client    client.Client
	namespace string
}

func (r *legacyReaper) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var rec aadv1.AzureAssignedIdentity
	if err := r.client.Get(ctx, req.NamespacedName, &rec); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	r1x, ok := compat.Read1x(&rec)
	if !ok {
		return ctrl.Result{}, nil
	}
	waiting, err := r.evidenceAwaited(ctx, r1x)
	if err != nil {
		return ctrl.Result{}, err
	}
	if waiting {
		return ctrl.Result{RequeueAfter: legacyRecheck}, nil
	}
	if err := r.client.Delete(ctx, &rec, client.Preconditions{UID: &rec.UID}); client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, fmt.Errorf("deleting aad-pod-identity 1.x's AzureAssignedIdentity %s: %w", req.NamespacedName, err)
	}
	log.FromContext(ctx).Info("deleted aad-pod-identity 1.x's per-pod AzureAssignedIdentity; no node pool was changed", "record", req.NamespacedName)
	return ctrl.Result{}, nil
}

// evidenceAwaited reports whether the pool controller may still need the
// record: MIC assigned its identity to a node's pool for a pod still
// running, and no record of ours says yet what the identity is there.
func (r *legacyReaper) evidenceAwaited(ctx context.Context, rec compat.Record1x) (bool, error) {
	if rec.State != aadv1.StateAssigned || rec.ResourceID == "" || rec.Pod.Name == "" {
		return false, nil
	}
	var pod corev1.Pod
	if err := r.client.Get(ctx, rec.Pod, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("getting pod %s: %w", rec.Pod, err)
	}
	if !identity.Live(&pod) {
		return false, nil
	}
	pool, err := nodePool(ctx, r.client, rec.Node)
	if err != nil || pool == nil {
		return false, err
	}
	var ours aadv1.AzureAssignedIdentityList
	if err := r.client.List(ctx, &ours, client.InNamespace(r.namespace), client.MatchingFields{recordPoolIndex: pool.Key()}); err != nil {
		return false, fmt.Errorf("listing AzureAssignedIdentities of pool: %w", err)
	}
	for i := range ours.Items {
		if namesResource(&ours.Items[i], rec.ResourceID) {
			return false, nil
		}
	}
	return true, nil
}

// namesResource reports whether a record of ours names resourceID: an entry of a
// pool's record, or a one-identity record not yet taken over.
func namesResource(rec *aadv1.AzureAssignedIdentity, resourceID string) bool {
	if e, ok := compat.Read01(rec); ok && aadv1.SameID(e.ResourceID, resourceID) {
		return true
	}
	return slices.ContainsFunc(rec.Status.Identities, func(e aadv1.IdentityAssignment) bool {
		return aadv1.SameID(e.ResourceID, resourceID)
	})
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
