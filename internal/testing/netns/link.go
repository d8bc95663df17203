package netns

import (
	"context"
	"fmt"
	"net"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Dial dials addr from inside netns: the socket belongs to that namespace
// for its whole life, whichever thread uses it afterwards.
func Dial(ctx context.Context, netns ns.NetNS, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := netns.Do(func(ns.NetNS) error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Listen opens a TCP listener inside netns.
func Listen(netns ns.NetNS, addr string) (net.Listener, error) {
	var l net.Listener
	err := netns.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// Uplink, run inside a fresh namespace, brings lo up and adds eth0, a veth
// whose peer hostLink is in host, with addr/24 and a default route via gw.
// The peer comes up without an address: the caller addresses or bridges it.
func Uplink(host ns.NetNS, hostLink string, addr, gw net.IP) error {
	if err := LinkUp("lo"); err != nil {
		return err
	}
	if _, _, err := ip.SetupVethWithName("eth0", hostLink, 1500, "", host); err != nil {
		return err
	}
	if err := LinkUp("eth0"); err != nil {
		return err
	}
	if err := AddAddr("eth0", &net.IPNet{IP: addr, Mask: net.CIDRMask(24, 32)}); err != nil {
		return err
	}
	eth0, err := netlink.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := ip.AddDefaultRoute(gw, eth0); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	return nil
}

// LinkUp sets the link called name up, in the calling thread's namespace.
func LinkUp(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s up: %w", name, err)
	}
	return nil
}

// AddAddr adds addr to the link called name, in the calling thread's
// namespace.
func AddAddr(name string, addr *net.IPNet) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: addr}); err != nil {
		return fmt.Errorf("adding %s to %s: %w", addr, name, err)
	}
	return nil
}
