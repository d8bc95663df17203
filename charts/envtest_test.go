package charts

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// One control plane for the package: the project's CRDs plus cert-manager's,
// so that Certificates and Issuers are validated too.
var (
	cfg *rest.Config
	k8s client.Client
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	env, err := framework.NewEnvironment(framework.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	crds := os.Getenv("CERT_MANAGER_CRDS")
	if _, err := os.Stat(filepath.Join(crds, "cert-manager.io_certificates.yaml")); err != nil {
		fmt.Fprintf(os.Stderr, "CERT_MANAGER_CRDS=%q has no cert-manager CRDs: run the tests through `make test`: %v\n", crds, err)
		return 1
	}
	env.CRDDirectoryPaths = append(env.CRDDirectoryPaths, crds)
	// Stop also ends the processes of a start that failed half-way.
	defer func() { _ = env.Stop() }()
	if cfg, err = env.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "starting envtest:", err)
		return 1
	}
	if k8s, err = client.New(cfg, client.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

func createNamespace(t *testing.T, name string) {
	t.Helper()
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
