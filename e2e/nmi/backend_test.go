//go:build e2e

package nmi_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
	"github.com/aad-pod-identity/aad-pod-identity/nmi/intercept"
)

// The kernel keeps legacy and nf_tables rules apart: in a namespace whose
// kubelet marked one backend (its hint chain), NMI detects that backend and
// writes its interception there, and nothing into the other.
func TestIPTablesBackends(t *testing.T) {
	framework.RequireRoot(t)
	for _, b := range []intercept.Backend{intercept.BackendLegacy, intercept.BackendNFT} {
		t.Run(string(b), func(t *testing.T) {
			suffix := make([]byte, 3)
			_, _ = rand.Read(suffix)
			node := createNetns(t, testns.Prefix+"ipt-"+string(b)+"-"+hex.EncodeToString(suffix))
			other := intercept.BackendNFT
			if b == intercept.BackendNFT {
				other = intercept.BackendLegacy
			}
			err := node.Do(func(ns.NetNS) error {
				if out, err := exec.Command("iptables-"+string(b), "-t", "mangle", "-N", "KUBE-IPTABLES-HINT").CombinedOutput(); err != nil {
					return fmt.Errorf("marking the node's backend: %w: %s", err, out)
				}
				ipt, got, reason, err := intercept.NewIPTables(intercept.BackendAuto, intercept.ExecRunner)
				if err != nil {
					return err
				}
				if got != b {
					return fmt.Errorf("detected %s (%s), want %s", got, reason, b)
				}
				if _, err := intercept.EnsureRules(ipt, intercept.Interception{MetadataIP: metadataIP, MetadataPort: 80, ListenAddress: "127.0.0.1:2579"}); err != nil {
					return err
				}
				mine, err := exec.Command("iptables-"+string(b)+"-save", "-t", "nat").Output()
				if err != nil {
					return err
				}
				theirs, err := exec.Command("iptables-"+string(other)+"-save", "-t", "nat").Output()
				if err != nil {
					return err
				}
				if !strings.Contains(string(mine), "-A PREROUTING -j "+Chain) {
					return fmt.Errorf("no interception in the %s nat table:\n%s", b, mine)
				}
				if strings.Contains(string(theirs), Chain) {
					return fmt.Errorf("interception written into the %s nat table too:\n%s", other, theirs)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
