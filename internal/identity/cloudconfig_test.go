package identity

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNodeIdentity(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"aks.json": `{"cloud":"AzurePublicCloud","useManagedIdentityExtension":true,"userAssignedIdentityID":"11111111-2222-3333-4444-555555555555","aadClientId":"msi"}`,
		"sp.json":  `{"aadClientId":"x","aadClientSecret":"y"}`,
		"bad.json": `{`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, path, want string
		wantErr          bool
	}{
		{name: "AKS: the kubelet identity", path: filepath.Join(dir, "aks.json"), want: "11111111-2222-3333-4444-555555555555"},
		{name: "service principal cluster: none", path: filepath.Join(dir, "sp.json")},
		{name: "no cloud config on this node", path: filepath.Join(dir, "missing.json")},
		{name: "not configured", path: ""},
		{name: "malformed", path: filepath.Join(dir, "bad.json"), wantErr: true},
		{name: "a directory", path: dir, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NodeIdentity(tc.path)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("NodeIdentity = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
