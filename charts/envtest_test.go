//go:build integration

package charts

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// One control plane for the package: the project's CRDs plus cert-manager's,
// so that Certificates and Issuers are validated too. It starts with the
// first test's namespace, which sets cfg and k8s.
var (
	controlPlane = framework.Shared{
		Options: framework.Options{CRDDirectories: []string{os.Getenv("CERT_MANAGER_CRDS")}},
		Setup: func(_ *envtest.Environment, c *rest.Config) (err error) {
			cfg = c
			k8s, err = client.New(cfg, client.Options{})
			return err
		},
	}
	cfg *rest.Config
	k8s client.Client
)

func TestMain(m *testing.M) {
	os.Exit(framework.Run(m))
}

func createNamespace(t *testing.T, name string) {
	t.Helper()
	crds := os.Getenv("CERT_MANAGER_CRDS")
	if _, err := os.Stat(filepath.Join(crds, "cert-manager.io_certificates.yaml")); err != nil {
		t.Fatalf("CERT_MANAGER_CRDS=%q has no cert-manager CRDs: run the tests through `make test-integration`: %v", crds, err)
	}
	controlPlane.Start(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}

// Every object of every golden rendering, hooks included, is accepted by a
// real apiserver (server-side apply, which rejects unknown fields; dry run).
func TestRenderedManifestsPassServerSideDryRun(t *testing.T) {
	for _, c := range cases {
		t.Run(c, func(t *testing.T) {
			ns := "aadpi-chart-" + c
			createNamespace(t, ns)
			manifest, err := render(goldenRelease, ns, valuesFile(c))
			if err != nil {
				t.Fatal(err)
			}
			objs, err := objects(manifest)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) < 15 {
				t.Fatalf("only %d objects rendered", len(objs))
			}
			for _, o := range objs {
				err := k8s.Apply(context.Background(), client.ApplyConfigurationFromUnstructured(o),
					client.DryRunAll, client.ForceOwnership, client.FieldOwner("aadpi-chart-test"))
				if err != nil {
					t.Errorf("%s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
			}
		})
	}
}
