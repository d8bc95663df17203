package identity

import (
	"context"
	"fmt"
	"slices"
	"sort"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// BindingSelectorIndex indexes AzureIdentityBindings by spec.selector so
// that resolving a pod's label is one indexed lookup.
const BindingSelectorIndex = "spec.selector"

// Resolved is one AzureIdentity a pod is admitted for.
type Resolved struct {
	Namespace string
	Name      string
	ClientID  string
	// ResourceID is a user-assigned identity's ARM resource.
	ResourceID string
	Type       aadv1.IdentityType
	// Federated: served through workload identity federation, never put
	// on a node pool (see Federated).
	Federated bool
}

// OnPools reports whether the identity must be on the pod's node pools for
// IMDS to serve it.
func (r Resolved) OnPools() bool { return r.Type == aadv1.UserAssignedMSI && !r.Federated }

// FederatedAudience is the audience of the service-account tokens NMI
// exchanges, Azure AD's default for federated credentials.
const FederatedAudience = "api://AzureADTokenExchange"

// Federated reports whether id is served through workload identity
// federation: a user-assigned identity, in a cluster whose policy federates
// all of them (all) or annotated so.
func Federated(id *aadv1.AzureIdentity, all bool) bool {
	return id.Spec.Type == aadv1.UserAssignedMSI && (all || id.Annotations[aadv1.AnnotationFederated] == "true")
}

// Key names the AzureIdentity.
func (r Resolved) Key() types.NamespacedName {
	return types.NamespacedName{Namespace: r.Namespace, Name: r.Name}
}

// Resolution is what a pod's aadpodidbinding label resolves to.
type Resolution struct {
	Identities []Resolved
	// Dangling lists bindings that name an AzureIdentity that does not exist.
	Dangling []string
}

// NeedsAssignment reports whether any identity must be put on a node pool
// before the pod may be scheduled.
func (r Resolution) NeedsAssignment() bool {
	return slices.ContainsFunc(r.Identities, Resolved.OnPools)
}

// Resolve matches bindings to a pod's selector. Only bindings in the pod's
// namespace count unless allowCrossNamespace is set; a binding always names
// an AzureIdentity in its own namespace. The result is sorted and
// deduplicated so that annotations are stable across replicas. allFederated
// is policy mode federated (see Federated).
func Resolve(podNamespace, selector string, bindings []aadv1.AzureIdentityBinding, identities []aadv1.AzureIdentity, allowCrossNamespace, allFederated bool) Resolution {
	var res Resolution
	if selector == "" {
		return res
	}
	byKey := make(map[types.NamespacedName]*aadv1.AzureIdentity, len(identities))
	for i := range identities {
		byKey[client.ObjectKeyFromObject(&identities[i])] = &identities[i]
	}
	seen := map[types.NamespacedName]bool{}
	for _, b := range bindings {
		if b.Spec.Selector != selector || (!allowCrossNamespace && b.Namespace != podNamespace) {
			continue
		}
		key := types.NamespacedName{Namespace: b.Namespace, Name: b.Spec.AzureIdentity}
		id, ok := byKey[key]
		if !ok {
			res.Dangling = append(res.Dangling, b.Namespace+"/"+b.Name)
			continue
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		res.Identities = append(res.Identities, Resolved{Namespace: id.Namespace, Name: id.Name, ClientID: id.Spec.ClientID, ResourceID: id.Spec.ResourceID, Type: id.Spec.Type,
			Federated: Federated(id, allFederated)})
	}
	sort.Slice(res.Identities, func(i, j int) bool {
		return res.Identities[i].Key().String() < res.Identities[j].Key().String()
	})
	sort.Strings(res.Dangling)
	return res
}

// Resolver looks bindings and identities up and resolves a pod's label.
// Components build it with NewResolver, which registers the index it reads.
type Resolver struct {
	// Cache is read first; Live is read when the cache may be behind, which
	// happens when a binding or identity is applied together with the pod.
	Cache               client.Reader
	Live                client.Reader
	AllowCrossNamespace bool
	// AllFederated is policy mode federated: every user-assigned identity
	// is federated.
	AllFederated bool
}

// NewResolver indexes AzureIdentityBindings by selector in the cache, which
// must not have started yet, and returns a resolver reading it. live may be
// nil when a cache miss must not cost an API call (NMI, the assigner).
func NewResolver(ctx context.Context, c cache.Cache, live client.Reader, allowCrossNamespace bool) (*Resolver, error) {
	if err := c.IndexField(ctx, &aadv1.AzureIdentityBinding{}, BindingSelectorIndex, IndexBindingSelector); err != nil {
		return nil, fmt.Errorf("indexing AzureIdentityBindings by selector: %w", err)
	}
	return &Resolver{Cache: c, Live: live, AllowCrossNamespace: allowCrossNamespace}, nil
}

// Resolve resolves the selector for a pod in podNamespace.
func (r *Resolver) Resolve(ctx context.Context, podNamespace, selector string) (Resolution, error) {
	if selector == "" {
		return Resolution{}, nil
	}
	res, err := r.resolveFrom(ctx, r.Cache, true, podNamespace, selector)
	if err != nil || r.Live == nil || (len(res.Identities) > 0 && len(res.Dangling) == 0) {
		return res, err
	}
	return r.resolveFrom(ctx, r.Live, false, podNamespace, selector)
}

func (r *Resolver) resolveFrom(ctx context.Context, reader client.Reader, indexed bool, podNamespace, selector string) (Resolution, error) {
	var opts []client.ListOption
	if !r.AllowCrossNamespace {
		opts = append(opts, client.InNamespace(podNamespace))
	}
	if indexed {
		opts = append(opts, client.MatchingFields{BindingSelectorIndex: selector})
	}
	var bindings aadv1.AzureIdentityBindingList
	if err := reader.List(ctx, &bindings, opts...); err != nil {
		return Resolution{}, fmt.Errorf("listing AzureIdentityBindings: %w", err)
	}
	// Only the identities the matching bindings name are fetched.
	var identities []aadv1.AzureIdentity
	fetched := map[client.ObjectKey]bool{}
	for _, b := range bindings.Items {
		key := client.ObjectKey{Namespace: b.Namespace, Name: b.Spec.AzureIdentity}
		if b.Spec.Selector != selector || fetched[key] {
			continue
		}
		fetched[key] = true
		var id aadv1.AzureIdentity
		if err := reader.Get(ctx, key, &id); err != nil {
			if client.IgnoreNotFound(err) == nil {
				continue
			}
			return Resolution{}, fmt.Errorf("getting AzureIdentity %s: %w", key, err)
		}
		identities = append(identities, id)
	}
	return Resolve(podNamespace, selector, bindings.Items, identities, r.AllowCrossNamespace, r.AllFederated), nil
}

// IndexBindingSelector is the field indexer for BindingSelectorIndex; tests
// that build a fake client register it themselves.
func IndexBindingSelector(obj client.Object) []string {
	b, ok := obj.(*aadv1.AzureIdentityBinding)
	if !ok {
		return nil
	}
	return []string{b.Spec.Selector}
}
