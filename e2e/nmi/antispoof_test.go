//go:build e2e

package nmi_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
	"github.com/aad-pod-identity/aad-pod-identity/nmi"
)

// spoofingDropped has bridged-b take bridged-a's address and, as a pod with
// NET_RAW could by gratuitous ARP, the node's neighbour entry for it, so
// that the replies come back to bridged-b: a request it sends from that
// address reaches NMI as bridged-a's. NMI's anti-spoofing chain drops it,
// since it enters through bridged-b's bridge port; with the chain's jump
// removed the same request gets bridged-a's token, which shows the spoof is
// real and the chain is what stops it; NMI then puts the jump back.
func spoofingDropped(t *testing.T, n *node) {
	victim, attacker := n.pods["bridged-a"], n.pods["bridged-b"]
	expectToken(t, n.signer, victim, tokenURL, n.idA.ClientID, n.idA.ResourceID)

	victimIP := net.ParseIP(victim.ip)
	// Each use opens the namespace anew: an HTTP dial may outlive its
	// request (and the test) in a goroutine of its own.
	inAttacker := func(fn func() error) error {
		n, err := testns.Open(attacker.netns)
		if err != nil {
			return err
		}
		defer n.Close()
		return n.Do(func(ns.NetNS) error { return fn() })
	}
	var mac net.HardwareAddr
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: victimIP, Mask: net.CIDRMask(32, 32)}}
	err := inAttacker(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		mac = eth0.Attrs().HardwareAddr
		return netlink.AddrAdd(eth0, addr)
	})
	if err != nil {
		t.Fatalf("giving the attacker the victim's address: %v", err)
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	poisoned := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: victimIP, HardwareAddr: mac}
	if err := netlink.NeighSet(poisoned); err != nil {
		t.Fatalf("poisoning the node's neighbour entry: %v", err)
	}
	// The attacker lets go of the address before the node asks who has it.
	restore := func() {
		_ = inAttacker(func() error {
			eth0, err := netlink.LinkByName("eth0")
			if err == nil {
				err = netlink.AddrDel(eth0, addr)
			}
			return err
		})
		_ = netlink.NeighDel(poisoned)
	}
	t.Cleanup(restore)

	spoofed := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var conn net.Conn
			err := inAttacker(func() error {
				var err error
				conn, err = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: victimIP}}).DialContext(ctx, network, a)
				return err
			})
			return conn, err
		}}}
	dropped := func() error {
		if status, body, err := getWith(spoofed, tokenURL); err == nil {
			return fmt.Errorf("the spoofed request was answered %d %s", status, body)
		}
		return nil
	}
	if err := dropped(); err != nil {
		t.Fatalf("with the anti-spoofing chain: %v\n%s", err, run(t, "iptables", "-t", "mangle", "-S"))
	}

	jump := []string{"-t", "mangle", "-D", "PREROUTING", "-j", nmi.SpoofChain}
	run(t, "iptables", jump...)
	status, body, err := getWith(spoofed, tokenURL)
	if err != nil || status != http.StatusOK || !strings.Contains(string(body), "access_token") {
		t.Fatalf("without the chain the spoof should get bridged-a's token (or the test proves nothing): %d %s %v", status, body, err)
	}
	// NMI's periodic check (2 s here) puts the jump back.
	framework.Eventually(t, 30*time.Second, "the spoofed request dropped again", dropped)
	restore()
	expectToken(t, n.signer, victim, tokenURL, n.idA.ClientID, n.idA.ResourceID)
}
