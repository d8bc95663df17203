//go:build integration

package metrics_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/aad-pod-identity/aad-pod-identity/internal/metrics"
	"github.com/aad-pod-identity/aad-pod-identity/internal/metricsserver"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// Secure metrics answer only callers the apiserver authenticates and
// authorizes for get on /metrics; plain ones answer everyone. The manager's
// endpoint (webhook, assigner) and internal/metricsserver's (NMI) answer
// alike.
func TestServerOptions(t *testing.T) {
	_, cfg := framework.StartEnvironment(t, framework.Options{})
	c := kubernetes.NewForConfigOrDie(cfg)
	scraper, outsider := token(t, c, "scraper"), token(t, c, "outsider")
	grantMetrics(t, c, "scraper")

	for _, srv := range []struct {
		name  string
		serve func(*testing.T, *rest.Config, bool) string
	}{
		{"manager", serve},
		{"metricsserver", serveStandalone},
	} {
		secure := srv.serve(t, cfg, true)
		plain := srv.serve(t, cfg, false)
		for _, tc := range []struct {
			name, url, token string
			want             int
		}{
			{"secure, anonymous", "https://" + secure, "", http.StatusUnauthorized},
			{"secure, authenticated but not authorized", "https://" + secure, outsider, http.StatusForbidden},
			{"secure, authorized", "https://" + secure, scraper, http.StatusOK},
			{"plain, anonymous", "http://" + plain, "", http.StatusOK},
		} {
			t.Run(srv.name+", "+tc.name, func(t *testing.T) {
				framework.Eventually(t, 30*time.Second, "status "+fmt.Sprint(tc.want), func() error {
					got, body, err := get(tc.url+"/metrics", tc.token)
					if err != nil {
						return err
					}
					if got != tc.want || (got == http.StatusOK && !strings.Contains(body, "# TYPE")) {
						return fmt.Errorf("got %d %.80s", got, body)
					}
					return nil
				})
			})
		}
	}
}

// serveStandalone serves controller-runtime's registry as NMI does.
func serveStandalone(t *testing.T, cfg *rest.Config, secure bool) string {
	t.Helper()
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := metricsserver.Handler(cfg, httpClient, ctrlmetrics.Registry, secure, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	l, err := metricsserver.Listen(t.Context(), "127.0.0.1:0", secure)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(l) }() // ends when closed
	t.Cleanup(func() { _ = hs.Close() })
	return l.Addr().String()
}

func serve(t *testing.T, cfg *rest.Config, secure bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Metrics: metrics.ServerOptions(addr, secure), HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return addr
}

// token returns a bearer token of a new ServiceAccount in default.
func token(t *testing.T, c kubernetes.Interface, name string) string {
	t.Helper()
	ctx := t.Context()
	if _, err := c.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := c.CoreV1().ServiceAccounts("default").CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func grantMetrics(t *testing.T, c kubernetes.Interface, sa string) {
	t.Helper()
	ctx := t.Context()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "metrics-reader"},
		Rules: []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "metrics-reader"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "default", Name: sa}}}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func get(url, token string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	// The secure endpoint's certificate is self-signed.
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // self-signed test endpoint
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
