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
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"golang.org/x/sync/singleflight"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// assertionLifetime is what NMI asks of a service-account token: the
// shortest Kubernetes issues, since Azure AD checks only its signature and
// expiry, and the pod it is bound to may be gone before then.
const assertionLifetime = 10 * time.Minute

// maxPodTokens bounds the tokens one pod has cached: a pod asking for ever
// new resources replaces its own, not its neighbours', and what NMI keeps to
// drop them with the pod stays small.
const maxPodTokens = 256

// assertionMargin is how long before its expiry a cached service-account
// token is replaced, so that Azure AD never sees an expired one.
const assertionMargin = 2 * time.Minute

// requestTokenFunc asks the apiserver for a token of a service account
// (TokenRequest, the serviceaccounts/token subresource).
type requestTokenFunc func(ctx context.Context, namespace, serviceAccount string, req *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error)

// federation serves federated identities: a service-account token bound to
// the calling pod, exchanged at Azure AD for the identity's token. What it
// keeps per pod (the service-account token, the keys of the pod's Azure AD
// tokens in the server's cache) goes as soon as the pod is deleted, so that
// whoever gets its address next finds nothing of it.
type federation struct {
	requestToken  requestTokenFunc
	nodeName      string
	tenantID      string // when the AzureIdentity names none
	authorityHost string
	transport     policy.Transporter // nil: azcore's default
	tokens        *tokenCache        // the server's; holds the pods' Azure AD tokens
	now           func() time.Time

	group singleflight.Group
	mu    sync.Mutex
	pods  map[types.UID]*federatedPod
}

// federatedPod is what federation keeps for one pod.
type federatedPod struct {
	assertion string
	expires   time.Time
	keys      map[cacheKey]bool // the pod's tokens in the server's cache
}

func newFederation(requestToken requestTokenFunc, nodeName, tenantID, authorityHost string, transport policy.Transporter, tokens *tokenCache) *federation {
	return &federation{requestToken: requestToken, nodeName: nodeName, tenantID: tenantID, authorityHost: authorityHost,
		transport: transport, tokens: tokens, now: time.Now, pods: map[types.UID]*federatedPod{}}
}

// key names pod's token of id for resource in the server's cache, and
// remembers it so that forget can drop it. The pod's UID and service
// account are part of it: no other pod, whatever its address or service
// account, is ever served it.
func (f *federation) key(pod *corev1.Pod, id *aadv1.AzureIdentity, resource string) string {
	key := fmt.Sprintf("%q", []string{"federated", string(pod.UID), pod.Namespace + "/" + serviceAccount(pod), f.tenant(id), tokenKey(id, nil, resource)})
	f.mu.Lock()
	defer f.mu.Unlock()
	p, hashed := f.pod(pod.UID), hashKey(key)
	if !p.keys[hashed] && len(p.keys) >= maxPodTokens {
		for old := range p.keys { // any one of the pod's own
			f.tokens.remove(old)
			delete(p.keys, old)
			break
		}
	}
	p.keys[hashed] = true
	return key
}

// pod returns what is kept for uid, creating it; f.mu is held.
func (f *federation) pod(uid types.UID) *federatedPod {
	p := f.pods[uid]
	if p == nil {
		p = &federatedPod{keys: map[cacheKey]bool{}}
		f.pods[uid] = p
	}
	return p
}

// forget drops everything kept for a deleted pod.
func (f *federation) forget(uid types.UID) {
	f.mu.Lock()
	p := f.pods[uid]
	delete(f.pods, uid)
	f.mu.Unlock()
	if p == nil {
		return
	}
	for key := range p.keys {
		f.tokens.remove(key)
	}
	federatedPodsForgotten.Inc()
}

// token exchanges a service-account token bound to pod for id's token for
// resource.
func (f *federation) token(ctx context.Context, pod *corev1.Pod, id *aadv1.AzureIdentity, resource string) (Token, error) {
	if pod.Spec.NodeName != f.nodeName {
		// The caller lookup finds only this node's pods; a token bound to
		// another node's pod is never asked for.
		return Token{}, forbidden("pod_on_another_node", "pod %s/%s runs on %s, not on NMI's node %s", pod.Namespace, pod.Name, pod.Spec.NodeName, f.nodeName)
	}
	assertion, err := f.assertion(ctx, pod)
	if err != nil {
		return Token{}, err
	}
	cred, err := azidentity.NewClientAssertionCredential(f.tenant(id), id.Spec.ClientID,
		func(context.Context) (string, error) { return assertion, nil },
		&azidentity.ClientAssertionCredentialOptions{
			ClientOptions:            azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: f.authorityHost}, Transport: f.transport},
			DisableInstanceDiscovery: true,
		})
	if err != nil {
		return Token{}, fmt.Errorf("federated credential for AzureIdentity %s/%s: %w", id.Namespace, id.Name, err)
	}
	tok, err := aadToken(ctx, cred, id.Spec.ClientID, resource)
	if err != nil {
		return Token{}, f.explain(ctx, pod, id, assertion, err)
	}
	return tok, nil
}

// tenant is the Azure AD tenant id's token comes from.
func (f *federation) tenant(id *aadv1.AzureIdentity) string {
	if id.Spec.TenantID != "" {
		return id.Spec.TenantID
	}
	return f.tenantID
}

// assertion returns a service-account token bound to pod, cached until
// shortly before it expires, one TokenRequest at a time per pod.
func (f *federation) assertion(ctx context.Context, pod *corev1.Pod) (string, error) {
	f.mu.Lock()
	if p := f.pods[pod.UID]; p != nil && f.now().Before(p.expires.Add(-assertionMargin)) {
		f.mu.Unlock()
		return p.assertion, nil
	}
	f.mu.Unlock()
	v, err, _ := f.group.Do(string(pod.UID), func() (any, error) {
		sa := serviceAccount(pod)
		req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{identity.FederatedAudience},
			ExpirationSeconds: ptr.To(int64(assertionLifetime.Seconds())),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}
		start := time.Now()
		resp, err := f.requestToken(ctx, pod.Namespace, sa, req)
		upstreamDuration.WithLabelValues("tokenrequest").Observe(time.Since(start).Seconds())
		if err != nil {
			upstreamErrors.WithLabelValues("tokenrequest").Inc()
			log.FromContext(ctx).Error(err, "TokenRequest failed", "pod", pod.Namespace+"/"+pod.Name, "serviceAccount", sa)
			return nil, newError(http.StatusBadGateway, "upstream_error", "service_account_token",
				"NMI could not get a token of service account %s/%s bound to pod %s for Azure AD; NMI's log on the node has the apiserver's answer", pod.Namespace, sa, pod.Name)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		// key made the entry; a pod deleted meanwhile has none, and its
		// token is not kept.
		if p := f.pods[pod.UID]; p != nil {
			p.assertion, p.expires = resp.Status.Token, resp.Status.ExpirationTimestamp.Time
		}
		return resp.Status.Token, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// explain turns Azure AD's refusal into an answer the pod's owner can act
// on: a missing federated credential is named with the issuer and subject
// it needs.
func (f *federation) explain(ctx context.Context, pod *corev1.Pod, id *aadv1.AzureIdentity, assertion string, err error) error {
	log.FromContext(ctx).Error(err, "Azure AD refused a federated identity", "identity", id.Namespace+"/"+id.Name, "clientID", id.Spec.ClientID, "pod", pod.Namespace+"/"+pod.Name)
	code := aadErrorCode(err)
	switch code {
	case "AADSTS70021", "AADSTS700211", "AADSTS700213":
		claims := unverifiedClaims(assertion)
		return forbidden("no_federated_credential",
			"Azure AD (%s) has no federated credential on identity %s (AzureIdentity %s/%s) for issuer %s, subject %s and audience %s: create one with az identity federated-credential create --identity-name <its name> --resource-group <its group> --name <any> --issuer %s --subject %s",
			code, id.Spec.ClientID, id.Namespace, id.Name, claims.Issuer, claims.Subject, identity.FederatedAudience, claims.Issuer, claims.Subject)
	}
	return newError(http.StatusBadGateway, "upstream_error", "aad_error",
		"Azure AD refused federated identity %s of AzureIdentity %s/%s%s; NMI's log on the node has its answer", id.Spec.ClientID, id.Namespace, id.Name, upstreamStatus(err))
}

// aadErrorCode is the first AADSTS code of Azure AD's answer in err ("":
// none).
func aadErrorCode(err error) string {
	var authErr *azidentity.AuthenticationFailedError
	if !errors.As(err, &authErr) || authErr.RawResponse == nil {
		return ""
	}
	text := authErr.Error()
	i := strings.Index(text, "AADSTS")
	if i < 0 {
		return ""
	}
	end := i + len("AADSTS")
	for end < len(text) && text[end] >= '0' && text[end] <= '9' {
		end++
	}
	return text[i:end]
}

// unverifiedClaims reads the issuer and subject of a token the apiserver
// just issued, for the error message only.
func unverifiedClaims(token string) (c struct {
	Issuer  string `json:"iss"`
	Subject string `json:"sub"`
}) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err == nil {
		_ = json.Unmarshal(payload, &c) // unreadable: the message says less
	}
	return c
}

// serviceAccount is the pod's service account, "default" when unset as the
// apiserver defaults it.
func serviceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	return "default"
}
