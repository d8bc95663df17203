package nmi

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// entitlement is what a calling pod may have now.
type entitlement struct {
	pod      types.NamespacedName
	selector string // the pod's aadpodidbinding label
	// crossNamespace tells whether bindings outside the pod's namespace count.
	crossNamespace bool
	// candidates were admitted and the pod's label still resolves to them.
	candidates []aadv1.AzureIdentity
	// unbound were admitted and still exist, but no binding the pod may use
	// names them any more: it was deleted or changed.
	unbound []aadv1.AzureIdentity
}

// podIdentities returns the pod's entitlement: of the identities its
// admission annotation lists (the upper bound: a binding created later adds
// nothing), those that still exist, split by whether its label still
// resolves to them, so that removing a binding ends the pod's access.
func podIdentities(ctx context.Context, r client.Reader, res *identity.Resolver, pod *corev1.Pod) (entitlement, error) {
	e := entitlement{
		pod:            types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name},
		selector:       pod.Labels[aadv1.BindingLabel],
		crossNamespace: res.AllowCrossNamespace,
	}
	admitted := admittedIdentities(pod)
	if len(admitted) == 0 {
		return e, nil
	}
	now, err := res.Resolve(ctx, pod.Namespace, e.selector)
	if err != nil {
		return e, fmt.Errorf("resolving pod %s: %w", e.pod, err)
	}
	bound := make(map[types.NamespacedName]bool, len(now.Identities))
	for _, id := range now.Identities {
		bound[id.Key()] = true
	}
	for _, key := range admitted {
		var id aadv1.AzureIdentity
		err := r.Get(ctx, key, &id)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return e, fmt.Errorf("reading AzureIdentity %s: %w", key, err)
		}
		if bound[key] {
			e.candidates = append(e.candidates, id)
		} else {
			e.unbound = append(e.unbound, id)
		}
	}
	return e, nil
}

// selectIdentity picks the identity a request names among the pod's
// candidates; with none named, the only one. Several candidates and none
// named is the 400 IMDS gives on a VM with several user-assigned identities.
func selectIdentity(req tokenRequest, e entitlement) (*aadv1.AzureIdentity, error) {
	if id := named(req, e.candidates); id != nil {
		return id, nil
	}
	if id := named(req, e.unbound); id != nil {
		return nil, e.bindingRemoved(*id)
	}
	switch {
	case len(e.candidates) == 0 && len(e.unbound) > 0:
		return nil, e.bindingRemoved(e.unbound...)
	case len(e.candidates) == 0:
		return nil, forbidden("no_identity", "Pod %s has no admitted AzureIdentity: label it aadpodidbinding=<selector> matching an AzureIdentityBinding in its namespace, and recreate it", e.pod)
	case req.ClientID != "":
		return nil, forbidden("identity_not_admitted", "Pod %s was not admitted for client_id %s; it may use: %s", e.pod, req.ClientID, clientIDs(e.candidates))
	case req.ResourceID != "":
		return nil, forbidden("identity_not_admitted", "Pod %s was not admitted for identity %s; it may use: %s", e.pod, req.ResourceID, clientIDs(e.candidates))
	case len(e.candidates) > 1:
		return nil, badRequest("several_identities", "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request (pod %s may use: %s)", e.pod, clientIDs(e.candidates))
	}
	return &e.candidates[0], nil
}

// named returns the identity among ids that the request names, if any.
func named(req tokenRequest, ids []aadv1.AzureIdentity) *aadv1.AzureIdentity {
	for i := range ids {
		id := &ids[i]
		switch {
		case req.ClientID != "" && aadv1.SameID(req.ClientID, id.Spec.ClientID),
			req.ResourceID != "" && id.Spec.ResourceID != "" && aadv1.SameID(req.ResourceID, id.Spec.ResourceID):
			return id
		}
	}
	return nil
}

// bindingRemoved refuses identities the pod was admitted for but is no
// longer bound to.
func (e entitlement) bindingRemoved(ids ...aadv1.AzureIdentity) error {
	names := make([]string, len(ids))
	hint := ""
	for i, id := range ids {
		names[i] = fmt.Sprintf("%s/%s (client_id %s)", id.Namespace, id.Name, id.Spec.ClientID)
		if id.Namespace != e.pod.Namespace && !e.crossNamespace {
			hint = "; bindings outside the pod's namespace count only when policy.allowCrossNamespace is true (the configuration all components read)"
		}
	}
	return forbidden("binding_removed", "Pod %s is no longer bound to AzureIdentity %s: no AzureIdentityBinding with selector %q names it any more (it was deleted or changed); restore the binding to use it again%s",
		e.pod, strings.Join(names, ", "), e.selector, hint)
}

func clientIDs(ids []aadv1.AzureIdentity) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.Spec.ClientID
	}
	return strings.Join(s, ", ")
}
