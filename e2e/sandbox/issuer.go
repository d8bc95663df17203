package sandbox

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// legacyIssuer is the issuer the sandbox's tokens had first; the apiserver
// still accepts it, so tokens issued under it keep validating.
const legacyIssuer = "https://kubernetes.default.svc.cluster.local"

// issuerURL is the service-account issuer the apiserver signs tokens as: its
// own address in the control-plane namespace, where its OpenID discovery
// document and keys are reachable, as an AKS cluster's OIDC issuer is.
func issuerURL() string { return fmt.Sprintf("https://%s:%d", APIServerIP, apiserverPort) }

// DialControlPlane dials addr from inside the control-plane namespace, where
// the apiserver and the fake Azure listen on APIServerIP.
func (s *Sandbox) DialControlPlane(ctx context.Context, network, addr string) (net.Conn, error) {
	return testns.Dial(ctx, s.cp, network, addr)
}

// controlPlaneClient is an HTTP client whose connections start inside the
// control-plane namespace.
func (s *Sandbox) controlPlaneClient(tlsCfg *tls.Config) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: s.DialControlPlane, TLSClientConfig: tlsCfg}}
}

// issuerClient fetches the issuer's discovery document and keys for the fake
// Azure AD, trusting the cluster's CA as Azure AD trusts a public issuer's.
func (s *Sandbox) issuerClient() *http.Client {
	return s.controlPlaneClient(&tls.Config{RootCAs: s.ca.Pool})
}

// issuerDiscoveryBinding lets anonymous callers read the issuer's discovery
// document and keys, as Azure AD reads a public issuer's. The apiserver
// accepts anonymous requests (--anonymous-auth defaults to true), but RBAC
// grants discovery only to service accounts by default.
const issuerDiscoveryBinding = "sandbox:service-account-issuer-discovery"

func (s *Sandbox) allowAnonymousIssuerDiscovery(ctx context.Context) error {
	const role = "system:service-account-issuer-discovery"
	c, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		return err
	}
	_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: issuerDiscoveryBinding},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:unauthenticated"}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("binding %s to anonymous callers: %w", role, err)
	}
	return nil
}
