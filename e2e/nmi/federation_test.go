//go:build e2e

package nmi_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// federatedAAD is the fake Azure AD, served over HTTPS on the node's
// loopback (azidentity refuses plain HTTP). It counts the distinct
// service-account tokens each pod's exchanges carried: each is one
// TokenRequest NMI made.
type federatedAAD struct {
	url    string // the authority host
	caFile string // its CA, NMI's SSL_CERT_FILE
	issuer string // envtest's service-account issuer

	mu         sync.Mutex
	assertions map[string]map[string]bool // by the pod they are bound to
	exchanges  map[string]int
}

// startFederatedAAD serves a fake Azure AD that accepts the federated
// credentials of n's identities; it reads envtest's discovery document and
// keys as the admin, since envtest's issuer is its own secure URL.
func startFederatedAAD(t *testing.T, n *node, env *envtest.Environment, cfg *rest.Config) *federatedAAD {
	t.Helper()
	ca, err := testca.New("nmi-e2e-azure")
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := ca.ServerTLSConfig("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	issuerTransport, err := rest.TransportFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &federatedAAD{caFile: filepath.Join(t.TempDir(), "azure-ca.crt"), issuer: env.ControlPlane.APIServer.SecureServing.URL("https", "/").String(),
		assertions: map[string]map[string]bool{}, exchanges: map[string]int{}}
	if err := ca.WritePEM(f.caFile); err != nil {
		t.Fatal(err)
	}
	aad := fakeazure.NewAAD(n.signer)
	aad.Federate(n.state, &http.Client{Transport: issuerTransport, Timeout: 10 * time.Second})
	srv := httptest.NewUnstartedServer(f.counting(aad.Handler()))
	srv.TLS = tlsCfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.url = srv.URL + "/"
	return f
}

// counting records each client assertion before next answers; next finds
// the form parsed.
func (f *federatedAAD) counting(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err == nil && r.PostForm.Get("client_assertion") != "" {
			f.record(r.PostForm.Get("client_assertion"))
		}
		next.ServeHTTP(w, r)
	})
}

func (f *federatedAAD) record(assertion string) {
	pod := boundPod(assertion)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.assertions[pod] == nil {
		f.assertions[pod] = map[string]bool{}
	}
	f.assertions[pod][assertion] = true
	f.exchanges[pod]++
}

// counts are pod's distinct service-account tokens (NMI's TokenRequests
// for it) and Azure AD exchanges so far.
func (f *federatedAAD) counts(pod string) (tokenRequests, exchanges int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.assertions[pod]), f.exchanges[pod]
}

// boundPod is the name of the pod a service-account token is bound to (""
// if unreadable): the fake Azure AD checks the token, this only counts.
func boundPod(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var claims struct {
		Kubernetes struct {
			Pod struct {
				Name string `json:"name"`
			} `json:"pod"`
		} `json:"kubernetes.io"`
	}
	_ = json.Unmarshal(payload, &claims) // unreadable: counted under ""
	return claims.Kubernetes.Pod.Name
}

// writeRSAKey writes a fresh RSA key for envtest's apiserver to sign
// service-account tokens with: its own is ECDSA (ES256), and Azure AD's
// federation, like the fake one, checks RS256.
func writeRSAKey(t *testing.T) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writeTemp(t, "sa.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// federatePod gives the pod called name identity id-fed, federated (no
// pool or record vouches for it): bound by selector fed, admitted on the
// pod, with a federated credential for the pod's service account from
// envtest's issuer. It returns once NMI serves the pod.
func federatePod(t *testing.T, n *node, name string) {
	t.Helper()
	ctx := context.Background()
	id := n.state.CreateIdentity("sub", "rg", "id-fed")
	if _, err := n.state.CreateFederatedCredential(id.ResourceID, "nmi-e2e", n.aad.issuer, "system:serviceaccount:default:default"); err != nil {
		t.Fatal(err)
	}
	objs := []client.Object{
		&aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "id-fed", Annotations: map[string]string{aadv1.AnnotationFederated: "true"}},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: id.ResourceID, ClientID: id.ClientID}},
		&aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "fed"},
			Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "id-fed", Selector: "fed"}},
	}
	for _, o := range objs {
		if err := n.client.Create(ctx, o); err != nil {
			t.Fatalf("creating %T: %v", o, err)
		}
	}
	var p corev1.Pod
	if err := n.client.Get(ctx, client.ObjectKey{Namespace: "default", Name: name}, &p); err != nil {
		t.Fatal(err)
	}
	p.Labels = map[string]string{aadv1.BindingLabel: "fed"}
	p.Annotations = map[string]string{aadv1.AnnotationIdentities: "default/id-fed", aadv1.AnnotationClientIDs: id.ClientID}
	if err := n.client.Update(ctx, &p); err != nil {
		t.Fatalf("admitting id-fed on pod %s: %v", name, err)
	}
	framework.Eventually(t, 30*time.Second, name+" served its federated identity", func() error {
		return checkStatus(n.pods[name], tokenURL, http.StatusOK, "access_token")
	})
}
