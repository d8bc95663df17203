//go:build e2e

package suite

import (
	"strings"
	"testing"
)

// TestCRDsUpgraded: helm never updates crds/, so the chart's pre-upgrade
// hook applies them. The azureidentities CRD is made to look like an
// earlier release's (without the 1.x spellings), then helm upgrade brings
// the chart's back, and a 1.x-spelled AzureIdentity is accepted.
func TestCRDsUpgraded(t *testing.T) {
	installed(t)
	const crd = "crd/azureidentities.aadpodidentity.k8s.io"
	kubectl(t, "patch", crd, "--type=json", "-p", `[
{"op":"remove","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/x-kubernetes-validations"},
{"op":"remove","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/ResourceID"}]`)
	if out := kubectl(t, "get", crd, "-o", "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.ResourceID.type}"); out != "" {
		t.Fatalf("the CRD still has ResourceID (%q): the test proves nothing", out)
	}
	if err := helmRelease("upgrade"); err != nil {
		t.Fatal(err)
	}
	if out := kubectl(t, "get", crd, "-o", "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.ResourceID.type}"); out != "string" {
		t.Fatalf("helm upgrade left the old CRD: ResourceID type %q", out)
	}
	id := userIdentity(t, "e2e-crds", "e2e-crds") // the fake cloud's identity, for its IDs
	out := kubectl(t, "apply", "-f", "-", "stdin:"+strings.NewReplacer("RID", id.ResourceID, "CID", id.ClientID).Replace(`apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata: {name: e2e-crds-legacy, namespace: default}
spec: {type: 0, ResourceID: RID, ClientID: CID}
`))
	t.Cleanup(func() {
		_, _ = kubectlIn("-n", "default", "delete", "azureidentity", "e2e-crds-legacy", "--ignore-not-found")
	})
	if !strings.Contains(out, "created") && !strings.Contains(out, "configured") {
		t.Errorf("1.x-spelled AzureIdentity: %s", out)
	}
	if left := kubectl(t, "-n", releaseNS, "get", "jobs,configmaps", "-l", "app.kubernetes.io/component=crds", "-o", "name"); strings.TrimSpace(left) != "" {
		t.Errorf("the CRD hook left %s", left)
	}
}
