// Package crdsync replaces the project's CustomResourceDefinitions with the
// chart's, for the chart's pre-install and pre-upgrade hook: Helm installs
// crds/ once and never updates them.
//
// A replace, not a server-side apply: a field only an earlier installer
// set (aad-pod-identity 1.x's CRDs mark the AzureIdentity inside its
// AzureAssignedIdentities x-kubernetes-embedded-resource, which would make
// the apiserver demand apiVersion and kind in this project's records) stays
// under an apply that does not name it, whoever owns it.
package crdsync

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/go-logr/logr"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Scheme holds the CustomResourceDefinition type.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = apiextensionsv1.AddToScheme(s)
	return s
}

// Read returns the CustomResourceDefinitions of the *.yaml files in dir.
func Read(dir string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(b, crd); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if crd.Kind != "CustomResourceDefinition" || crd.Name == "" {
			return nil, fmt.Errorf("%s: not a named CustomResourceDefinition", f)
		}
		crds = append(crds, crd)
	}
	if len(crds) == 0 {
		return nil, fmt.Errorf("no CustomResourceDefinition in %s", dir)
	}
	return crds, nil
}

// Replace creates each CRD, or replaces the one in place with it. Objects
// stored under the old definition stay as they are.
func Replace(ctx context.Context, c client.Client, crds []*apiextensionsv1.CustomResourceDefinition, log logr.Logger) error {
	for _, want := range crds {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			var live apiextensionsv1.CustomResourceDefinition
			err := c.Get(ctx, client.ObjectKeyFromObject(want), &live)
			if apierrors.IsNotFound(err) {
				return c.Create(ctx, want.DeepCopy())
			}
			if err != nil {
				return err
			}
			next := want.DeepCopy()
			next.ResourceVersion = live.ResourceVersion
			return c.Update(ctx, next)
		})
		if err != nil {
			return fmt.Errorf("replacing CustomResourceDefinition %s: %w", want.Name, err)
		}
		log.Info("CustomResourceDefinition replaced", "crd", want.Name)
	}
	return nil
}
