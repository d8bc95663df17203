package sandbox

import (
	"fmt"
	"net"
	"os"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// Addressing. Node i (1-based) is joined to the control-plane namespace by
// 10.200.i.0/24 and owns the pod range 10.244.i.0/24; the apiserver and the
// fake Azure listen on APIServerIP on the control plane's loopback.
var (
	// APIServerIP is where the apiserver and fake ARM/AAD listen.
	APIServerIP = net.IPv4(10, 200, 0, 1)
	// MetadataIP is the IMDS address inside every node namespace.
	MetadataIP = net.IPv4(169, 254, 169, 254)
)

func nodeLinkCP(i int) net.IP   { return net.IPv4(10, 200, byte(i), 1) }
func nodeLinkNode(i int) net.IP { return net.IPv4(10, 200, byte(i), 2) }
func podCIDR(i int) *net.IPNet {
	return &net.IPNet{IP: net.IPv4(10, 244, byte(i), 0), Mask: net.CIDRMask(24, 32)}
}

// sysctls hardens nothing and loosens only what routing between namespaces
// needs; each is written from a thread inside the namespace, so it applies
// to that namespace alone.
func setSysctls(values map[string]string) error {
	for k, v := range values {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
		}
	}
	return nil
}

func routerSysctls() map[string]string {
	return map[string]string{
		"net/ipv4/ip_forward":             "1",
		"net/ipv4/conf/all/rp_filter":     "0",
		"net/ipv4/conf/default/rp_filter": "0",
	}
}

// setupControlPlaneNS brings up loopback and the apiserver address.
func setupControlPlaneNS(cp ns.NetNS) error {
	return cp.Do(func(ns.NetNS) error {
		if err := testns.LinkUp("lo"); err != nil {
			return err
		}
		if err := testns.AddAddr("lo", &net.IPNet{IP: APIServerIP, Mask: net.CIDRMask(32, 32)}); err != nil {
			return err
		}
		return setSysctls(routerSysctls())
	})
}

// setupNodeNS joins node i to the control plane with a veth pair, gives it
// the metadata address on loopback (the node's CNI plugin makes the pods'
// bridge), and routes both ways.
func setupNodeNS(cp, node ns.NetNS, i int) error {
	cpLink := fmt.Sprintf("n%d", i)
	err := node.Do(func(ns.NetNS) error {
		if err := testns.Uplink(cp, cpLink, nodeLinkNode(i), nodeLinkCP(i)); err != nil {
			return fmt.Errorf("link to control plane: %w", err)
		}
		if err := testns.AddAddr("lo", &net.IPNet{IP: MetadataIP, Mask: net.CIDRMask(32, 32)}); err != nil {
			return err
		}
		return setSysctls(routerSysctls())
	})
	if err != nil {
		return fmt.Errorf("node %d: %w", i, err)
	}
	return cp.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(cpLink)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: nodeLinkCP(i), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return ip.AddRoute(podCIDR(i), nodeLinkNode(i), link)
	})
}

// maxNodes bounds the node count: each node takes a /24 of 10.200/16 and
// of 10.244/16.
const maxNodes = 50
