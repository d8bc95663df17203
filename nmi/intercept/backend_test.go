package intercept

import (
	"errors"
	"strings"
	"testing"
)

func TestDetectBackend(t *testing.T) {
	const empty = "*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
	hint := "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
	rules := func(n int) string { return "*nat\n" + strings.Repeat("-A POSTROUTING -j MASQUERADE\n", n) + "COMMIT\n" }
	tests := []struct {
		name string
		save map[string]string // "<backend> <table|all>" → output; missing: the binary is not there
		want Backend
	}{
		{"hint in legacy", map[string]string{"legacy mangle": hint, "legacy all": rules(0), "nft mangle": empty, "nft all": rules(9)}, BackendLegacy},
		{"hint in nft", map[string]string{"legacy mangle": empty, "legacy all": rules(9), "nft mangle": hint, "nft all": rules(0)}, BackendNFT},
		{"more legacy rules", map[string]string{"legacy mangle": empty, "legacy all": rules(3), "nft mangle": empty, "nft all": rules(1)}, BackendLegacy},
		{"more nft rules", map[string]string{"legacy mangle": empty, "legacy all": rules(0), "nft mangle": empty, "nft all": rules(2)}, BackendNFT},
		{"no signal", map[string]string{"legacy mangle": empty, "legacy all": rules(0), "nft mangle": empty, "nft all": rules(0)}, BackendPath},
		{"only one backend installed", map[string]string{"nft mangle": hint, "nft all": rules(5)}, BackendPath},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			run := func(name string, args ...string) ([]byte, error) {
				backend := strings.TrimSuffix(strings.TrimPrefix(name, "iptables-"), "-save")
				table := "all"
				if len(args) == 2 {
					table = args[1]
				}
				out, ok := tc.save[backend+" "+table]
				if !ok {
					return nil, errors.New("executable file not found in $PATH")
				}
				return []byte(out), nil
			}
			if got, reason := DetectBackend(run); got != tc.want {
				t.Errorf("backend %s (%s), want %s", got, reason, tc.want)
			}
		})
	}
}
