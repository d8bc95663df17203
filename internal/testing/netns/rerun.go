package netns

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// EnvChild is set in a test process that RerunIn started.
const EnvChild = "AADPI_NETNS_CHILD"

// InChild reports whether this test process is the one RerunIn started.
func InChild() bool { return os.Getenv(EnvChild) == "1" }

// RerunIn runs the calling test again, as a child process inside netns,
// with env added, and fails t if the child fails. The child's output is
// logged.
func RerunIn(t *testing.T, netns ns.NetNS, timeout time.Duration, env ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := []string{"-test.run", "^" + t.Name() + "$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), EnvChild+"=1"), env...)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := Start(netns, cmd); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	t.Log("namespace run:\n" + out.String())
	if err != nil {
		t.Fatalf("namespace run failed: %v", err)
	}
}

// NodeUplink, run inside a node's namespace, brings lo up and gives the
// namespace an address (addr/24 on a veth pair with both ends here, as
// kernels without the dummy driver have veth) and a default route through
// it: kube-apiserver and the kubelet pick their addresses from the default
// route. Nothing needs to answer at the gateway.
func NodeUplink(addr net.IP) error {
	if err := LinkUp("lo"); err != nil {
		return err
	}
	uplink := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink"}, PeerName: "uplink-peer"}
	if err := netlink.LinkAdd(uplink); err != nil {
		return fmt.Errorf("adding the uplink: %w", err)
	}
	if err := AddAddr("uplink", &net.IPNet{IP: addr, Mask: net.CIDRMask(24, 32)}); err != nil {
		return err
	}
	for _, l := range []string{"uplink-peer", "uplink"} {
		if err := LinkUp(l); err != nil {
			return err
		}
	}
	gw := addr.To4()
	return ip.AddDefaultRoute(net.IPv4(gw[0], gw[1], gw[2], 254), uplink)
}
