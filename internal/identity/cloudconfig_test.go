package identity

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNodeIdentity(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path, want string
		wantErr          bool
	}{
		{name: "AKS: the kubelet identity", path: write("aks.json", `{"cloud":"AzurePublicCloud","useManagedIdentityExtension":true,"userAssignedIdentityID":"11111111-2222-3333-4444-555555555555","aadClientId":"msi"}`),
			want: "11111111-2222-3333-4444-555555555555"},
		{name: "service principal cluster: none", path: write("sp.json", `{"aadClientId":"x","aadClientSecret":"y"}`)},
		{name: "no cloud config on this node", path: filepath.Join(dir, "missing.json")},
		{name: "not configured", path: ""},
		{name: "malformed", path: write("bad.json", `{`), wantErr: true},
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
