package nmi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// EventIdentityNotAssigned is the pod event NMI records, in managed mode,
// the first time a pod asks for an identity its node's pool does not have.
const EventIdentityNotAssigned = "IdentityNotAssigned"

// managedIdentities is what managed mode adds to serving a user-assigned
// identity: the pairing check on the token and an actionable answer when
// the identity is not on the pool.
type managedIdentities struct {
	nodePool func(context.Context) (nodepool.Pool, error)
	recorder events.EventRecorder

	mu       sync.Mutex
	reported map[string]bool // pod UID|identity: event recorded once
}

// checkPairing refuses a token whose identity is not the resource the
// AzureIdentity names: with no assigner to confirm the pairing, an
// AzureIdentity could otherwise name another identity's client ID (the
// kubelet's) next to a resource of its own. The token's xms_mirid claim is
// the resource ID of the identity IMDS issued it for.
func checkPairing(tok Token, id *aadv1.AzureIdentity) error {
	mirID, err := tokenMirID(tok.AccessToken)
	if err != nil {
		return newError(http.StatusForbidden, "forbidden", "identity_pairing_unverified",
			"AzureIdentity %s/%s: the token IMDS issued for client ID %s does not say which identity it is for (%v), so NMI cannot check it is resource %s",
			id.Namespace, id.Name, id.Spec.ClientID, err, id.Spec.ResourceID)
	}
	if !aadv1.SameID(mirID, id.Spec.ResourceID) {
		return newError(http.StatusForbidden, "forbidden", "identity_pairing_mismatch",
			"AzureIdentity %s/%s: client ID %s belongs to another identity than resource %s; correct spec.clientID or spec.resourceID",
			id.Namespace, id.Name, id.Spec.ClientID, id.Spec.ResourceID)
	}
	return nil
}

// tokenMirID reads the xms_mirid claim of a JWT. The signature is not
// checked: the token comes from the node's IMDS, which NMI trusts.
func tokenMirID(jwt string) (string, error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return "", errors.New("not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return "", fmt.Errorf("decoding JWT claims: %w", err)
	}
	var claims struct {
		MirID string `json:"xms_mirid"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", fmt.Errorf("decoding JWT claims: %w", err)
	}
	if claims.MirID == "" {
		return "", errors.New("no xms_mirid claim")
	}
	return claims.MirID, nil
}

// notAssigned turns IMDS's "identity not found" into what an admin runs to
// fix it, and records a Warning event on the pod the first time.
func (m *managedIdentities) notAssigned(ctx context.Context, pod *corev1.Pod, id *aadv1.AzureIdentity, err error) error {
	var ae *apiError
	if !errors.As(err, &ae) || ae.reason != "identity_not_assigned" {
		return err
	}
	where, fix := "this node's VMSS or VM", "az vmss identity assign -g <node resource group> -n <VMSS> --identities "+id.Spec.ResourceID
	if pool, perr := m.nodePool(ctx); perr == nil {
		where = fmt.Sprintf("%s %s in resource group %s", poolNoun(pool), pool.Name, pool.ResourceGroup)
		fix = fmt.Sprintf("az %s identity assign -g %s -n %s --identities %s", poolCommand(pool), pool.ResourceGroup, pool.Name, id.Spec.ResourceID)
	}
	msg := fmt.Sprintf("identity %s (client ID %s) of AzureIdentity %s/%s is not assigned to %s; in managed mode the cluster admin assigns it: %s",
		id.Spec.ResourceID, id.Spec.ClientID, id.Namespace, id.Name, where, fix)
	key := string(pod.UID) + "|" + id.Namespace + "/" + id.Name
	m.mu.Lock()
	if len(m.reported) >= maxReported {
		clear(m.reported) // pods come and go: at worst an event is repeated
	}
	first := !m.reported[key]
	m.reported[key] = true
	m.mu.Unlock()
	if first {
		m.recorder.Eventf(pod, nil, corev1.EventTypeWarning, EventIdentityNotAssigned, "GetToken", "%s", msg)
	}
	return forbidden("identity_not_assigned", "%s", msg)
}

// maxReported bounds the memory of which pods were told.
const maxReported = 4096

func poolNoun(p nodepool.Pool) string {
	if p.Kind == nodepool.KindVM {
		return "VM"
	}
	return "VMSS"
}

func poolCommand(p nodepool.Pool) string {
	if p.Kind == nodepool.KindVM {
		return "vm"
	}
	return "vmss"
}
