package sandbox

import (
	"strings"
	"testing"
)

func TestCheckSocketPaths(t *testing.T) {
	for _, tc := range []struct {
		dir  string
		want string // in the error; "" for none
	}{
		{"/tmp/aadpi-sbx-abcdef", ""},
		{"/tmp/TestSandbox865201409/002", ""},
		{"/tmp/BenchmarkPodStartup1001019060385/002", "is too long"},
	} {
		err := checkSocketPaths(tc.dir)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("checkSocketPaths(%q) = %v, want %q", tc.dir, err, tc.want)
		}
	}
}
