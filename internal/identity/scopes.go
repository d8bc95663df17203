package identity

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// Scopes is the admin's allowlist of where the user-assigned identities an
// AzureIdentity names may live, per namespace: ARM scopes (a subscription,
// or a resource group in one), lower-cased. The namespace "*" stands for
// every namespace not listed. Empty: no restriction.
type Scopes map[string][]string

// AllNamespaces is the Scopes key for namespaces without their own entry.
const AllNamespaces = "*"

var scopeRE = regexp.MustCompile(`(?i)^/subscriptions/[^/]+(/resourcegroups/[^/]+)?$`)

// ParseScopes reads namespace=scope entries, such as
// team-a=/subscriptions/<id>/resourceGroups/team-a-identities; a namespace
// may be given several times.
func ParseScopes(entries []string) (Scopes, error) {
	s := Scopes{}
	for _, e := range entries {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		ns, scope, ok := strings.Cut(e, "=")
		ns, scope = strings.TrimSpace(ns), strings.TrimRight(strings.TrimSpace(scope), "/")
		if !ok || ns == "" || !scopeRE.MatchString(scope) {
			return nil, fmt.Errorf("identity scope %q: want namespace=/subscriptions/<id> or namespace=/subscriptions/<id>/resourceGroups/<group>", e)
		}
		s[ns] = append(s[ns], aadv1.IDKey(scope))
	}
	return s, nil
}

// Check returns an error saying what is allowed when id names a
// user-assigned identity outside its namespace's scopes. Service principals
// are not ARM resources and are not restricted.
func (s Scopes) Check(id *aadv1.AzureIdentity) error {
	if len(s) == 0 || id.Spec.Type != aadv1.UserAssignedMSI {
		return nil
	}
	allowed, ok := s[id.Namespace]
	if !ok {
		allowed = s[AllNamespaces]
	}
	rid := aadv1.IDKey(id.Spec.ResourceID)
	if slices.ContainsFunc(allowed, func(scope string) bool { return strings.HasPrefix(rid, scope+"/") }) {
		return nil
	}
	if len(allowed) == 0 {
		return fmt.Errorf("the cluster admin allows no user-assigned identity for AzureIdentities in namespace %s", id.Namespace)
	}
	return fmt.Errorf("the cluster admin allows AzureIdentities in namespace %s only user-assigned identities under %s", id.Namespace, strings.Join(allowed, ", "))
}
