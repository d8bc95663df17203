package nmi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
)

// ExceptionPolicy scopes AzurePodIdentityExceptions. An exception is a hole
// in the trust model: whoever may create one in a namespace decides which
// pods there bypass admission.
type ExceptionPolicy struct {
	// Namespaces whose exceptions count; "*" is every namespace.
	Namespaces []string
	Tokens     config.ExceptionTokens
	// NodeIdentityClientIDs are the node's own user-assigned identities
	// (the kubelet's), which config.ExceptionTokensNode lets exception pods name.
	NodeIdentityClientIDs []string
}

// isException reports whether an AzurePodIdentityException in the pod's
// namespace matches one of its labels, in a namespace where exceptions count.
func (p ExceptionPolicy) isException(ctx context.Context, r client.Reader, pod *corev1.Pod) (bool, error) {
	if !slices.Contains(p.Namespaces, "*") && !slices.Contains(p.Namespaces, pod.Namespace) {
		return false, nil
	}
	var list aadv1.AzurePodIdentityExceptionList
	if err := r.List(ctx, &list, client.InNamespace(pod.Namespace)); err != nil {
		return false, fmt.Errorf("listing AzurePodIdentityExceptions in %s: %w", pod.Namespace, err)
	}
	for _, e := range list.Items {
		for k, v := range e.Spec.PodLabels {
			if got, ok := pod.Labels[k]; ok && got == v {
				return true, nil
			}
		}
	}
	return false, nil
}

// tokenQuery decides an exception pod's token request and returns the query
// to send IMDS, or nil to send the pod's own (config.ExceptionTokensAny: IMDS
// unchanged). Otherwise the query is rebuilt from the variables NMI parsed
// and allowed, so that IMDS never reads one NMI did not judge: another
// spelling of a name, or a pair Go's parser skips and IMDS's may not.
func (p ExceptionPolicy) tokenQuery(h http.Header, q url.Values) (url.Values, error) {
	switch p.Tokens {
	case config.ExceptionTokensAny:
		return nil, nil
	case config.ExceptionTokensNode:
		req, err := parseTokenRequest(h, q)
		if err != nil {
			return nil, err
		}
		out := url.Values{"api-version": {req.APIVersion}, "resource": {req.Resource}}
		switch {
		case req.ClientID == "" && req.ResourceID == "":
			return out, nil
		case req.ClientID != "" && slices.ContainsFunc(p.NodeIdentityClientIDs, func(id string) bool { return aadv1.SameID(id, req.ClientID) }):
			out.Set("client_id", req.ClientID)
			return out, nil
		}
		return nil, forbidden("exception_scope", "An AzurePodIdentityException gives this pod only the node's own identity (policy.exceptions.tokens: node): name no identity, or one of the node identities %v", p.NodeIdentityClientIDs)
	}
	return nil, forbidden("exception_scope", "An AzurePodIdentityException gives this pod the node's instance metadata but no tokens (policy.exceptions.tokens: none)")
}

// pathAllowed tells which non-token paths an exception pod may reach: with
// config.ExceptionTokensAny every one, otherwise the node's instance metadata
// without the opt-in paths the allowlist does not name, and without IMDS's
// identity API, which such a pod reaches through the token route alone.
func (p ExceptionPolicy) pathAllowed(s *Server, path string) bool {
	if p.Tokens == config.ExceptionTokensAny {
		return true
	}
	return under(path, "/metadata", func(a, b string) bool { return a == b }) && !s.optInRefused(path) && !identityPath(path)
}
