//go:build e2e

package nmi_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
	"github.com/aad-pod-identity/aad-pod-identity/nmi/intercept"
)

// spoofingDropped has bridged-b pose as bridged-a (poseAs): a request it
// sends from that address reaches NMI as bridged-a's. NMI's anti-spoofing
// chain drops it, since it enters through bridged-b's bridge port; with the
// chain's jump removed the same request gets bridged-a's token, which shows
// the spoof is real and the chain is what stops it; NMI then puts the jump
// back.
func spoofingDropped(t *testing.T, n *node) {
	victim := n.pods["bridged-a"]
	expectToken(t, n.signer, victim, tokenURL, n.idA.ClientID, n.idA.ResourceID)
	spoofed, stop := poseAs(t, n.pods["bridged-b"], victim)
	dropped := func() error { return droppedFor(spoofed, tokenURL) }
	if err := dropped(); err != nil {
		t.Fatalf("with the anti-spoofing chain: %v\n%s", err, run(t, "iptables", "-t", "mangle", "-S"))
	}

	unjump := []string{"-t", "mangle", "-D", "PREROUTING", "-j", intercept.SpoofChain}
	servedWithout(t, unjump, "the spoof, posing as bridged-a", spoofed, tokenURL)
	// NMI's periodic check (2 s here) puts the jump back.
	framework.Eventually(t, 30*time.Second, "the spoofed request dropped again", dropped)
	stop()
	expectToken(t, n.signer, victim, tokenURL, n.idA.ClientID, n.idA.ResourceID)
}

// listenGuarded runs NMI as the chart does, listening on the node's address,
// where every pod (and every pod of other nodes) can connect to it without
// the DNAT: a pod connecting straight to it would skip the anti-spoofing
// chain, which matches the metadata address only, and a pod unknown to this
// NMI would wait on it. Its guard drops both pod-a's direct connection and
// bridged-b's posing as bridged-a, and still lets the node's own processes
// connect; with the guard's jump removed both are served (bridged-a's token
// to the forger), which shows the guard is what stops them; NMI then puts
// the jump back.
func listenGuarded(t *testing.T, n *node) {
	// Not 2579: the earlier NMI's stand-in still listens there.
	listen := net.JoinHostPort(nodeIP, "2580")
	n.nmi = startNMI(t, n, filepath.Join(t.TempDir(), "nmi.log"), "--listen-address", listen)
	t.Cleanup(func() {
		_ = n.nmi.Process.Kill()
		_ = n.nmi.Wait()
	})
	framework.Eventually(t, time.Minute, "NMI intercepting to "+listen, func() error {
		return checkStatus(n.pods["pod-b"], tokenURL, http.StatusForbidden, "no admitted AzureIdentity")
	})
	victim := n.pods["bridged-a"]
	expectToken(t, n.signer, victim, tokenURL, n.idA.ClientID, n.idA.ResourceID)

	direct := strings.Replace(tokenURL, metadataIP, listen, 1)
	fromPod := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: dialIn(n.pods["pod-a"].netns)}}
	spoofed, stop := poseAs(t, n.pods["bridged-b"], victim)
	dropped := func() error {
		if err := droppedFor(fromPod, direct); err != nil {
			return fmt.Errorf("a pod's direct connection: %w", err)
		}
		if err := droppedFor(spoofed, direct); err != nil {
			return fmt.Errorf("a direct connection posing as bridged-a: %w", err)
		}
		return nil
	}
	if err := dropped(); err != nil {
		t.Fatalf("with the guard: %v\n%s", err, run(t, "iptables", "-S"))
	}
	local, err := net.DialTimeout("tcp", listen, 3*time.Second)
	if err != nil {
		t.Fatalf("the node's own process cannot connect to %s: %v", listen, err)
	}
	_ = local.Close()

	unjump := []string{"-D", "INPUT", "-j", intercept.GuardChain}
	// pod-a and bridged-a are admitted for the same identity.
	servedWithout(t, unjump, "pod-a's direct connection", fromPod, direct)
	servedWithout(t, unjump, "a direct connection posing as bridged-a", spoofed, direct)
	framework.Eventually(t, 30*time.Second, "direct connections dropped again", dropped)
	stop()
	expectToken(t, n.signer, victim, tokenURL, n.idA.ClientID, n.idA.ResourceID)
	// Stop this NMI before the cleanup, which it would otherwise undo.
	_ = n.nmi.Process.Kill()
	_ = n.nmi.Wait()
}

// servedWithout removes one of NMI's jumps (unjump, iptables arguments)
// and expects c's request to get a token, which shows that jump is what
// drops it. NMI's periodic check may put the jump back before the request
// arrives, so it removes it again until the request gets through.
func servedWithout(t *testing.T, unjump []string, what string, c *http.Client, url string) {
	t.Helper()
	framework.Eventually(t, 30*time.Second, "without the jump, "+what+" gets a token (or the test proves nothing)", func() error {
		// Fails when NMI has not put the jump back yet: nothing to remove.
		_ = exec.Command("iptables", unjump...).Run()
		status, body, err := getWith(c, url)
		if err != nil {
			return err
		}
		if status != http.StatusOK || !strings.Contains(string(body), "access_token") {
			return fmt.Errorf("%d %s", status, body)
		}
		return nil
	})
}

// droppedFor tells whether a request with c gets no answer at all.
func droppedFor(c *http.Client, url string) error {
	if status, body, err := getWith(c, url); err == nil {
		return fmt.Errorf("answered %d %s", status, body)
	}
	return nil
}

// poseAs gives attacker victim's address and, as a pod with NET_RAW could
// by gratuitous ARP, the node's neighbour entry for it, so that the replies
// come back to attacker; it returns a client that sends from that address,
// and stop, which ends the posing (also done when the test ends).
func poseAs(t *testing.T, attacker, victim pod) (spoofed *http.Client, stop func()) {
	t.Helper()
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
	stop = func() {
		_ = inAttacker(func() error {
			eth0, err := netlink.LinkByName("eth0")
			if err == nil {
				err = netlink.AddrDel(eth0, addr)
			}
			return err
		})
		_ = netlink.NeighDel(poisoned)
	}
	t.Cleanup(stop)
	spoofed = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var conn net.Conn
			err := inAttacker(func() error {
				var err error
				conn, err = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: victimIP}}).DialContext(ctx, network, a)
				return err
			})
			return conn, err
		}}}
	return spoofed, stop
}
