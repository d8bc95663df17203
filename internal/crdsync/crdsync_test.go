//go:build integration

package crdsync_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/compat"
	"github.com/aad-pod-identity/aad-pod-identity/internal/crdsync"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	v18 "github.com/aad-pod-identity/aad-pod-identity/internal/testing/v18"
)

// Over aad-pod-identity 1.8's CRDs and objects, Replace leaves exactly
// this project's schemas (1.8's embedded-resource marker gone, so records
// of ours are accepted; status subresource on), and 1.8's objects read
// through them with what adoption needs.
func TestReplaceOver18(t *testing.T) {
	_, cfg := framework.StartEnvironment(t, framework.Options{})
	ctx := t.Context()
	crds, err := client.New(cfg, client.Options{Scheme: crdsync.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: identity.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	old := decodeCRDs(t, v18.CRDs)
	if err := crdsync.Replace(ctx, crds, old, logr.Discard()); err != nil {
		t.Fatalf("installing 1.8's CRDs: %v", err)
	}
	w := v18.World{Namespace: "default", Identity: "demo", Selector: "demo", Pod: "demo", Node: "n1",
		ResourceID: "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/demo",
		ClientID:   "00000000-0000-0000-0000-0000000000c1", Exception: "kube-dns"}
	for _, obj := range decodeObjects(t, w.Objects()) {
		framework.Eventually(t, 30*time.Second, "1.8's "+obj.GetKind()+" created", func() error {
			return c.Create(ctx, obj.DeepCopy())
		})
	}

	ours, err := crdsync.Read(filepath.Join(framework.RepoRoot(), "config", "crd"))
	if err != nil {
		t.Fatal(err)
	}
	if err := crdsync.Replace(ctx, crds, ours, logr.Discard()); err != nil {
		t.Fatal(err)
	}
	var aai apiextensionsv1.CustomResourceDefinition
	if err := crds.Get(ctx, client.ObjectKey{Name: "azureassignedidentities.aadpodidentity.k8s.io"}, &aai); err != nil {
		t.Fatal(err)
	}
	ref := aai.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"].Properties["azureIdentityRef"]
	if ref.XEmbeddedResource || aai.Spec.Versions[0].Subresources == nil || aai.Spec.Versions[0].Subresources.Status == nil {
		t.Fatalf("after the replace: azureIdentityRef embedded %v, subresources %+v", ref.XEmbeddedResource, aai.Spec.Versions[0].Subresources)
	}
	rec := &aadv1.AzureAssignedIdentity{}
	rec.Namespace, rec.Name = "default", "ours"
	rec.Spec = aadv1.AzureAssignedIdentitySpec{NodePool: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/p"}
	framework.Eventually(t, 30*time.Second, "a record of ours accepted", func() error {
		return c.Create(ctx, rec)
	})
	rec.Status.Identities = []aadv1.IdentityAssignment{{AzureIdentityRef: aadv1.IdentityReference{Namespace: "default", Name: "demo"},
		ClientID: w.ClientID, ResourceID: w.ResourceID, State: aadv1.StateAssigned}}
	if err := c.Status().Update(ctx, rec); err != nil {
		t.Fatalf("writing an entry: %v", err)
	}

	var legacy aadv1.AzureAssignedIdentity
	if err := c.Get(ctx, client.ObjectKey{Namespace: w.Namespace, Name: w.LegacyRecordName()}, &legacy); err != nil {
		t.Fatal(err)
	}
	want := compat.Record1x{Pod: types.NamespacedName{Namespace: w.Namespace, Name: w.Pod}, Node: w.Node,
		Identity: types.NamespacedName{Namespace: w.Namespace, Name: w.Identity}, ResourceID: w.ResourceID, State: aadv1.StateAssigned}
	if got, ok := compat.Read1x(&legacy); !ok || got != want {
		t.Errorf("1.8's record reads as %+v (1.x's: %v), want %+v", got, ok, want)
	}
	var id aadv1.AzureIdentity
	if err := c.Get(ctx, client.ObjectKey{Namespace: w.Namespace, Name: w.Identity}, &id); err != nil || id.Spec.ClientID != w.ClientID || id.Spec.ResourceID != w.ResourceID {
		t.Errorf("1.8's AzureIdentity reads as %+v, %v", id.Spec, err)
	}
	var exc aadv1.AzurePodIdentityException
	if err := c.Get(ctx, client.ObjectKey{Namespace: w.Namespace, Name: w.Identity + "-exception"}, &exc); err != nil || exc.Spec.PodLabels["app"] != w.Exception {
		t.Errorf("1.8's AzurePodIdentityException reads as %+v, %v", exc.Spec, err)
	}
}

func decodeCRDs(t *testing.T, stream string) []*apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	var out []*apiextensionsv1.CustomResourceDefinition
	for _, u := range decodeObjects(t, stream) {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		b, err := u.MarshalJSON()
		if err == nil {
			err = utilyaml.Unmarshal(b, crd)
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, crd)
	}
	return out
}

func decodeObjects(t *testing.T, stream string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewBufferString(stream), 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatal(fmt.Errorf("decoding fixture: %w", err))
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}
