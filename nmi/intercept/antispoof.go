package intercept

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

const (
	mangleTable = "mangle"
	// SpoofChain, in the mangle table, drops metadata traffic that carries
	// a pod's source address but enters the node through another interface
	// than that pod's own host-side veth; PREROUTING jumps to it first.
	// NMI knows a caller by its source address, and on a bridge a pod with
	// NET_RAW can take a neighbour's address (ARP included) and receive the
	// replies.
	SpoofChain = "aad-metadata-antispoof"
)

// podLink is a pod address and the host side of the pod's interface.
type podLink struct {
	ip, hostIf string
	// bridged: the host side is a bridge port, so the packet's IP-level
	// input is the bridge and only -m physdev sees the port.
	bridged bool
}

// linkKind is what the host's network says about an interface name.
type linkKind int

const (
	linkMissing linkKind = iota
	linkBridge
	linkBridgePort
	linkRouted
)

// hostLinks looks interfaces up in the node's network namespace.
func hostLinks(name string) (linkKind, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return linkMissing, nil
		}
		return 0, fmt.Errorf("looking up interface %s: %w", name, err)
	}
	if l.Type() == "bridge" {
		return linkBridge, nil
	}
	if master := l.Attrs().MasterIndex; master != 0 {
		m, err := netlink.LinkByIndex(master)
		if err != nil {
			return 0, fmt.Errorf("looking up the master of interface %s: %w", name, err)
		}
		if m.Type() == "bridge" {
			return linkBridgePort, nil
		}
	}
	return linkRouted, nil
}

// cniCacheEntry is the part of a libcni results cache file NMI reads: the
// result the network plugin returned on ADD, which the container runtime
// writes before the sandbox starts and deletes with it.
type cniCacheEntry struct {
	Result struct {
		Interfaces []struct {
			Name    string `json:"name"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	} `json:"result"`
}

// readCNICache maps the IPv4 pod addresses of dir's results to their host
// side: the result's interface outside the sandbox that is not a bridge (a
// bridge plugin reports the bridge, the host veth and the pod's interface;
// a routed one the host veth and the pod's). An address claimed by several
// results (a leftover file, say) goes to the newest one whose interface
// still exists.
func readCNICache(dir string, links func(string) (linkKind, error)) ([]podLink, error) {
	files, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil // no pod sandbox on this node yet
		}
		return nil, fmt.Errorf("reading the CNI results cache: %w", err)
	}
	type found struct {
		podLink
		at time.Time
	}
	byIP := map[string]found{}
	for _, f := range files {
		info, err := f.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue // removed since listed, or not a result
		}
		raw, err := os.ReadFile(filepath.Join(dir, f.Name()))
		if err != nil {
			continue
		}
		var e cniCacheEntry
		if json.Unmarshal(raw, &e) != nil {
			continue // not a result NMI understands: no rule, as before
		}
		for _, iface := range e.Result.Interfaces {
			if iface.Sandbox != "" || iface.Name == "" {
				continue
			}
			kind, err := links(iface.Name)
			if err != nil {
				return nil, err
			}
			if kind == linkMissing || kind == linkBridge {
				continue
			}
			for _, a := range e.Result.IPs {
				ip, _, err := net.ParseCIDR(a.Address)
				if err != nil || ip.To4() == nil {
					continue
				}
				key := ip.String()
				if prev, ok := byIP[key]; ok && prev.at.After(info.ModTime()) {
					continue
				}
				byIP[key] = found{podLink{ip: key, hostIf: iface.Name, bridged: kind == linkBridgePort}, info.ModTime()}
			}
			break
		}
	}
	out := make([]podLink, 0, len(byIP))
	for _, f := range byIP {
		out = append(out, f.podLink)
	}
	slices.SortFunc(out, func(a, b podLink) int { return strings.Compare(a.ip, b.ip) })
	return out, nil
}

// spoofChain is the anti-spoofing chain for the pods' links: per pod, its
// address aimed at the metadata endpoint from anywhere but its own veth is
// dropped, in the form `iptables -S` prints.
func (i Interception) spoofChain(pods []podLink) managedChain {
	rules := make([][]string, 0, len(pods)+1)
	dst, port := i.MetadataIP+"/32", strconv.Itoa(i.MetadataPort)
	for _, p := range pods {
		if p.bridged {
			rules = append(rules, []string{"-s", p.ip + "/32", "-d", dst, "-p", "tcp", "-m", "tcp", "--dport", port,
				"-m", "physdev", "--physdev-is-in", "!", "--physdev-in", p.hostIf, "-j", "DROP"})
			continue
		}
		rules = append(rules, []string{"-s", p.ip + "/32", "-d", dst, "!", "-i", p.hostIf, "-p", "tcp", "-m", "tcp", "--dport", port, "-j", "DROP"})
	}
	rules = append(rules, []string{"-j", "RETURN"})
	return managedChain{table: mangleTable, name: SpoofChain, hook: prerouting, rules: rules}
}

// EnsureSpoofRules writes the anti-spoofing chain for the pods of the CNI
// results cache in dir, and reports how many pods it covers and whether
// anything changed.
func EnsureSpoofRules(ipt IPTables, i Interception, dir string) (pods int, changed bool, err error) {
	links, err := readCNICache(dir, hostLinks)
	if err != nil {
		return 0, false, err
	}
	changed, err = ensureChain(ipt, i.spoofChain(links))
	return len(links), changed, err
}
