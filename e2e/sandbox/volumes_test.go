//go:build e2e

package sandbox

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// hostPath volumes follow the kubelet's type rules: an existing lock file
// is fine for FileOrCreate (the chart's /run/xtables.lock), a missing one
// is created as a file, and a Socket must be a socket.
func TestHostPathTypes(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "existing.lock")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "cri.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, tc := range []struct {
		name    string
		path    string
		typ     corev1.HostPathType
		ok      bool
		regular bool // afterwards, a regular file
	}{
		{"existing file, FileOrCreate", file, corev1.HostPathFileOrCreate, true, true},
		{"missing file, FileOrCreate", filepath.Join(dir, "run", "new.lock"), corev1.HostPathFileOrCreate, true, true},
		{"missing dir, DirectoryOrCreate", filepath.Join(dir, "newdir"), corev1.HostPathDirectoryOrCreate, true, false},
		{"file where a directory must be", file, corev1.HostPathDirectory, false, true},
		{"socket", sock, corev1.HostPathSocket, true, false},
		{"file where a socket must be", file, corev1.HostPathSocket, false, true},
		{"missing socket", filepath.Join(dir, "none.sock"), corev1.HostPathSocket, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := hostPath(&corev1.HostPathVolumeSource{Path: tc.path, Type: &tc.typ})
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if fi, err := os.Stat(tc.path); tc.regular && (err != nil || !fi.Mode().IsRegular()) {
				t.Fatalf("%s is not a regular file afterwards: %v", tc.path, err)
			}
		})
	}
}
