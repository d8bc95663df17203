package nmi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// servicePrincipals gets tokens for type 1 and 2 identities from Azure AD.
type servicePrincipals struct {
	secrets              *recentSecrets
	allowCrossNamespace  bool
	defaultAuthorityHost string
	transport            policy.Transporter // nil: azcore's default
}

// token gets a token for id from Azure AD with its Secret, as s.secret read it.
func (s *servicePrincipals) token(ctx context.Context, id *aadv1.AzureIdentity, secret *corev1.Secret, resource string) (Token, error) {
	cred, err := s.credential(id, secret)
	if err != nil {
		return Token{}, err
	}
	tok, err := aadToken(ctx, cred, id.Spec.ClientID, resource)
	if err != nil {
		// Azure AD's answer stays in NMI's log: it is the authority's body,
		// not something the pod should be handed.
		log.FromContext(ctx).Error(err, "Azure AD refused a service principal", "identity", id.Namespace+"/"+id.Name, "clientID", id.Spec.ClientID)
		return Token{}, newError(http.StatusBadGateway, "upstream_error", "aad_error",
			"Azure AD refused service principal %s of AzureIdentity %s/%s%s; NMI's log on the node has its answer", id.Spec.ClientID, id.Namespace, id.Name, upstreamStatus(err))
	}
	return tok, nil
}

// aadToken gets cred's token for resource from Azure AD, in IMDS's shape.
func aadToken(ctx context.Context, cred tokenCredential, clientID, resource string) (Token, error) {
	scope := resource
	if !strings.HasSuffix(scope, "/.default") {
		scope += "/.default"
	}
	start := time.Now()
	at, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}})
	upstreamDuration.WithLabelValues("aad").Observe(time.Since(start).Seconds())
	if err != nil {
		upstreamErrors.WithLabelValues("aad").Inc()
		return Token{}, err
	}
	now := time.Now()
	return Token{
		AccessToken: at.Token,
		ExpiresIn:   strconv.FormatInt(int64(at.ExpiresOn.Sub(now).Seconds()), 10),
		ExpiresOn:   strconv.FormatInt(at.ExpiresOn.Unix(), 10),
		NotBefore:   strconv.FormatInt(now.Unix(), 10),
		Resource:    resource,
		TokenType:   "Bearer",
		ClientID:    clientID,
	}, nil
}

type tokenCredential interface {
	GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error)
}

func (s *servicePrincipals) credential(id *aadv1.AzureIdentity, secret *corev1.Secret) (tokenCredential, error) {
	authority, err := s.authority(id)
	if err != nil {
		return nil, err
	}
	opts := azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: authority}, Transport: s.transport}
	name := id.Namespace + "/" + id.Name
	switch id.Spec.Type {
	case aadv1.ServicePrincipal:
		value, err := secretValue(secret, "clientSecret")
		if err != nil {
			return nil, err
		}
		return azidentity.NewClientSecretCredential(id.Spec.TenantID, id.Spec.ClientID, string(value), &azidentity.ClientSecretCredentialOptions{
			ClientOptions: opts, AdditionallyAllowedTenants: id.Spec.AuxiliaryTenantIDs, DisableInstanceDiscovery: true,
		})
	case aadv1.ServicePrincipalCertificate:
		data, err := secretValue(secret, "certificate")
		if err != nil {
			return nil, err
		}
		certs, key, err := azidentity.ParseCertificates(data, secret.Data["password"])
		if err != nil {
			return nil, newError(http.StatusInternalServerError, "invalid_secret", "invalid_certificate",
				"Secret %s/%s of AzureIdentity %s holds no usable certificate and key (PKCS#12 with key 'password', or PEM): %v", secret.Namespace, secret.Name, name, err)
		}
		return azidentity.NewClientCertificateCredential(id.Spec.TenantID, id.Spec.ClientID, certs, key, &azidentity.ClientCertificateCredentialOptions{
			ClientOptions: opts, AdditionallyAllowedTenants: id.Spec.AuxiliaryTenantIDs, DisableInstanceDiscovery: true,
		})
	}
	return nil, fmt.Errorf("AzureIdentity %s has type %d, which has no service principal", name, id.Spec.Type)
}

// knownAuthorities are the Azure AD authorities of the public and
// sovereign clouds; an AzureIdentity's adEndpoint may name only these or
// NMI's own --aad-authority-host, since NMI sends the Secret there.
var knownAuthorities = []string{
	cloud.AzurePublic.ActiveDirectoryAuthorityHost,
	cloud.AzureGovernment.ActiveDirectoryAuthorityHost,
	cloud.AzureChina.ActiveDirectoryAuthorityHost,
}

// authority returns the Azure AD authority for the identity.
func (s *servicePrincipals) authority(id *aadv1.AzureIdentity) (string, error) {
	if id.Spec.ADEndpoint == "" {
		return s.defaultAuthorityHost, nil
	}
	want, err := url.Parse(id.Spec.ADEndpoint)
	if err == nil && want.Scheme == "https" && want.User == nil && strings.Trim(want.Path, "/") == "" && want.RawQuery == "" {
		for _, a := range append(slices.Clone(knownAuthorities), s.defaultAuthorityHost) {
			if known, err := url.Parse(a); err == nil && strings.EqualFold(known.Host, want.Host) && known.Scheme == want.Scheme {
				return a, nil
			}
		}
	}
	return "", forbidden("ad_endpoint_not_allowed", "AzureIdentity %s/%s has adEndpoint %q, which is not an Azure AD authority NMI sends secrets to: leave it empty, or use one of %s",
		id.Namespace, id.Name, id.Spec.ADEndpoint, strings.Join(append(slices.Clone(knownAuthorities), s.defaultAuthorityHost), ", "))
}

// upstreamStatus names the HTTP status of an Azure AD refusal, if it has one.
func upstreamStatus(err error) string {
	var authErr *azidentity.AuthenticationFailedError
	if errors.As(err, &authErr) && authErr.RawResponse != nil {
		return fmt.Sprintf(" (HTTP %d)", authErr.RawResponse.StatusCode)
	}
	return ""
}

// secret reads the identity's Secret, only from the identity's namespace
// unless cross-namespace Secrets are allowed: otherwise whoever may create an
// AzureIdentity could use any Secret NMI can read.
func (s *servicePrincipals) secret(ctx context.Context, id *aadv1.AzureIdentity) (*corev1.Secret, error) {
	name := id.Namespace + "/" + id.Name
	ref := id.Spec.ClientPassword
	if ref == nil || ref.Name == "" {
		return nil, newError(http.StatusInternalServerError, "invalid_identity", "no_secret", "AzureIdentity %s has type %d but no clientPassword Secret", name, id.Spec.Type)
	}
	key := types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}
	if key.Namespace == "" {
		key.Namespace = id.Namespace
	}
	if key.Namespace != id.Namespace && !s.allowCrossNamespace {
		return nil, forbidden("cross_namespace_secret", "AzureIdentity %s refers to Secret %s in another namespace; move the Secret to %s or set nmi.allowCrossNamespaceSecrets: true", name, key, id.Namespace)
	}
	secret, err := s.secrets.get(ctx, key)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, newError(http.StatusInternalServerError, "invalid_identity", "secret_not_found", "Secret %s of AzureIdentity %s does not exist", key, name)
		}
		return nil, fmt.Errorf("reading Secret %s: %w", key, err)
	}
	return secret, nil
}

// secretReuse is how long a Secret read serves further requests.
const secretReuse = time.Second

// recentSecrets reads Secrets live (NMI never lists them), collapsing
// concurrent reads of one Secret and reusing a read for maxAge. Every
// service principal request reads its Secret, since the Secret's
// resourceVersion is in the token cache key (a rotated Secret gets a new
// token at once); a pod looping on its token must not become as many
// apiserver requests.
type recentSecrets struct {
	reader client.Reader
	maxAge time.Duration
	now    func() time.Time
	group  singleflight.Group

	mu    sync.Mutex
	reads map[types.NamespacedName]secretRead
}

type secretRead struct {
	secret *corev1.Secret // shared: never modified
	at     time.Time
}

func newRecentSecrets(reader client.Reader, maxAge time.Duration) *recentSecrets {
	return &recentSecrets{reader: reader, maxAge: maxAge, now: time.Now, reads: map[types.NamespacedName]secretRead{}}
}

func (r *recentSecrets) get(ctx context.Context, key types.NamespacedName) (*corev1.Secret, error) {
	r.mu.Lock()
	read, ok := r.reads[key]
	r.mu.Unlock()
	if ok && r.now().Sub(read.at) < r.maxAge {
		return read.secret, nil
	}
	// Detached from the first caller's cancellation: others may wait on it.
	v, err, _ := r.group.Do(key.String(), func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchDeadline)
		defer cancel()
		var secret corev1.Secret
		if err := r.reader.Get(rctx, key, &secret); err != nil {
			return nil, err
		}
		r.store(key, &secret)
		return &secret, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*corev1.Secret), nil
}

// store keeps a read, dropping the ones too old to reuse: the map holds
// only the Secrets in use.
func (r *recentSecrets) store(key types.NamespacedName, secret *corev1.Secret) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	for k, read := range r.reads {
		if now.Sub(read.at) >= r.maxAge {
			delete(r.reads, k)
		}
	}
	r.reads[key] = secretRead{secret: secret, at: now}
}

// secretValue returns data[key], or the only value of a one-key Secret.
func secretValue(secret *corev1.Secret, key string) ([]byte, error) {
	if v, ok := secret.Data[key]; ok {
		return v, nil
	}
	if len(secret.Data) == 1 {
		for _, v := range secret.Data {
			return v, nil
		}
	}
	return nil, newError(http.StatusInternalServerError, "invalid_secret", "secret_key_missing", "Secret %s/%s has no key %q (and more than one key)", secret.Namespace, secret.Name, key)
}
