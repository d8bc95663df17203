package nmi

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// podIdentities returns the pod's admitted AzureIdentities that still exist.
func podIdentities(ctx context.Context, r client.Reader, pod *corev1.Pod) ([]aadv1.AzureIdentity, error) {
	var ids []aadv1.AzureIdentity
	for _, key := range admittedIdentities(pod) {
		var id aadv1.AzureIdentity
		err := r.Get(ctx, key, &id)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading AzureIdentity %s: %w", key, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// selectIdentity picks the identity a request names among the pod's admitted
// ones; with none named, the only one. Several admitted and none named is the
// 400 IMDS gives on a VM with several user-assigned identities.
func selectIdentity(req tokenRequest, podName string, admitted []aadv1.AzureIdentity) (*aadv1.AzureIdentity, error) {
	if len(admitted) == 0 {
		return nil, forbidden("no_identity", "Pod %s has no admitted AzureIdentity: label it aadpodidbinding=<selector> matching an AzureIdentityBinding in its namespace, and recreate it", podName)
	}
	for i := range admitted {
		id := &admitted[i]
		switch {
		case req.ClientID != "" && strings.EqualFold(req.ClientID, id.Spec.ClientID),
			req.ResourceID != "" && id.Spec.ResourceID != "" && strings.EqualFold(req.ResourceID, id.Spec.ResourceID):
			return id, nil
		}
	}
	switch {
	case req.ClientID != "":
		return nil, forbidden("identity_not_admitted", "Pod %s was not admitted for client_id %s; it may use: %s", podName, req.ClientID, clientIDs(admitted))
	case req.ResourceID != "":
		return nil, forbidden("identity_not_admitted", "Pod %s was not admitted for identity %s; it may use: %s", podName, req.ResourceID, clientIDs(admitted))
	case len(admitted) > 1:
		return nil, badRequest("several_identities", "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request (pod %s may use: %s)", podName, clientIDs(admitted))
	}
	return &admitted[0], nil
}

func clientIDs(ids []aadv1.AzureIdentity) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.Spec.ClientID
	}
	return strings.Join(s, ", ")
}
