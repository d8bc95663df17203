package nmi

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// The node's own (kubelet) identity, named by the cloud config AKS writes
// on every node, is served to no pod, without any chart value; exception
// pods with policy.exceptions.tokens: node may still name it.
func TestKubeletIdentityIsProtected(t *testing.T) {
	const kubelet = "11111111-2222-3333-4444-555555555555"
	cloudConfig := filepath.Join(t.TempDir(), "azure.json")
	if err := os.WriteFile(cloudConfig, []byte(`{"useManagedIdentityExtension":true,"userAssignedIdentityID":"`+kubelet+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := Options{CloudConfig: cloudConfig, ProtectedIdentities: []string{"other"}}
	protected, err := protectedIdentities(&opts)
	if err != nil {
		t.Fatal(err)
	}
	naming := &aadv1.AzureIdentity{Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: kubelet,
		ResourceID: "/subscriptions/s/resourceGroups/mc/providers/Microsoft.ManagedIdentity/userAssignedIdentities/agentpool"}}
	if f := protected.Named(naming); f != "clientID" {
		t.Errorf("an AzureIdentity naming the kubelet identity: protected field %q, want clientID", f)
	}
	if !slices.Contains(opts.Exceptions.NodeIdentityClientIDs, kubelet) {
		t.Errorf("node identities for exception pods = %v, want the kubelet's", opts.Exceptions.NodeIdentityClientIDs)
	}

	opts = Options{CloudConfig: filepath.Join(t.TempDir(), "none.json")}
	if _, err := protectedIdentities(&opts); err != nil || len(opts.Exceptions.NodeIdentityClientIDs) != 0 {
		t.Errorf("no cloud config: %v, node identities %v", err, opts.Exceptions.NodeIdentityClientIDs)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := protectedIdentities(&Options{CloudConfig: bad}); err == nil {
		t.Error("a malformed cloud config was accepted")
	}
}
