package nmi

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
)

const (
	natTable   = "nat"
	prerouting = "PREROUTING"
	// Chain holds the interception rules; PREROUTING jumps to it first.
	Chain = "aad-metadata"
)

// IPTables is the part of go-iptables NMI uses; tests pass a fake.
type IPTables interface {
	List(table, chain string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	Delete(table, chain string, rulespec ...string) error
}

// Interception describes what is redirected where.
type Interception struct {
	MetadataIP   string
	MetadataPort int
	// ListenAddress is NMI's ip:port, the DNAT target.
	ListenAddress string
}

// jumpRule is the PREROUTING rule, in iptables -S form without "-A chain".
var jumpRule = []string{"-j", Chain}

// chainRules are the chain's rules in the exact form `iptables -S` prints
// them, so that the periodic check can compare text.
func (i Interception) chainRules() ([][]string, error) {
	if ip := net.ParseIP(i.MetadataIP); ip == nil || ip.To4() == nil {
		return nil, fmt.Errorf("metadata IP %q is not an IPv4 address", i.MetadataIP)
	}
	if i.MetadataPort <= 0 || i.MetadataPort > 65535 {
		return nil, fmt.Errorf("metadata port %d is out of range", i.MetadataPort)
	}
	host, port, err := net.SplitHostPort(i.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", i.ListenAddress, err)
	}
	if ip := net.ParseIP(host); ip == nil || ip.To4() == nil {
		return nil, fmt.Errorf("listen address %q needs an IPv4 address to redirect to", i.ListenAddress)
	}
	return [][]string{
		{"!", "-s", "127.0.0.1/32", "-d", i.MetadataIP + "/32", "-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(i.MetadataPort),
			"-j", "DNAT", "--to-destination", net.JoinHostPort(host, port)},
		{"-j", "RETURN"},
	}, nil
}

// LoopbackTarget reports whether the DNAT target is a loopback address, which
// needs route_localnet.
func (i Interception) LoopbackTarget() bool {
	host, _, err := net.SplitHostPort(i.ListenAddress)
	return err == nil && net.ParseIP(host).IsLoopback()
}

// EnsureRules makes the nat table hold exactly the interception: the chain
// with its rules, and one jump to it as PREROUTING's first rule. It reports
// whether anything had to change.
func EnsureRules(ipt IPTables, i Interception) (changed bool, err error) {
	want, err := i.chainRules()
	if err != nil {
		return false, err
	}
	got, err := chainSpecs(ipt, Chain)
	if err != nil {
		return false, err
	}
	if !slices.EqualFunc(got, want, slices.Equal) {
		changed = true
		// ClearChain creates the chain when missing.
		if err := ipt.ClearChain(natTable, Chain); err != nil {
			return false, fmt.Errorf("clearing chain %s: %w", Chain, err)
		}
		for _, r := range want {
			if err := ipt.Append(natTable, Chain, r...); err != nil {
				return false, fmt.Errorf("adding rule to %s: %w", Chain, err)
			}
		}
	}
	pre, err := chainSpecs(ipt, prerouting)
	if err != nil {
		return false, err
	}
	jumps := 0
	for _, r := range pre {
		if slices.Equal(r, jumpRule) {
			jumps++
		}
	}
	if jumps == 1 && len(pre) > 0 && slices.Equal(pre[0], jumpRule) {
		return changed, nil
	}
	for ; jumps > 0; jumps-- {
		if err := ipt.Delete(natTable, prerouting, jumpRule...); err != nil {
			return false, fmt.Errorf("removing misplaced jump to %s: %w", Chain, err)
		}
	}
	if err := ipt.Insert(natTable, prerouting, 1, jumpRule...); err != nil {
		return false, fmt.Errorf("adding jump to %s at the top of %s: %w", Chain, prerouting, err)
	}
	return true, nil
}

// chainSpecs lists a chain's rules as argument lists, without "-A chain"; a
// missing chain has none.
func chainSpecs(ipt IPTables, chain string) ([][]string, error) {
	exists, err := ipt.ChainExists(natTable, chain)
	if err != nil {
		return nil, fmt.Errorf("looking for chain %s: %w", chain, err)
	}
	if !exists {
		return nil, nil
	}
	lines, err := ipt.List(natTable, chain)
	if err != nil {
		return nil, fmt.Errorf("listing chain %s: %w", chain, err)
	}
	var specs [][]string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "-A" && f[1] == chain {
			specs = append(specs, f[2:])
		}
	}
	return specs, nil
}

// RemoveRules deletes the jump and the chain: uninstall only, since without
// them pods reach IMDS directly.
func RemoveRules(ipt IPTables) error {
	// iptables refuses a jump to a missing chain, so without the chain there
	// is nothing to remove (and -C would fail).
	exists, err := ipt.ChainExists(natTable, Chain)
	if err != nil || !exists {
		return err
	}
	for {
		ok, err := ipt.Exists(natTable, prerouting, jumpRule...)
		if err != nil {
			return fmt.Errorf("looking for jump to %s: %w", Chain, err)
		}
		if !ok {
			break
		}
		if err := ipt.Delete(natTable, prerouting, jumpRule...); err != nil {
			return fmt.Errorf("removing jump to %s: %w", Chain, err)
		}
	}
	if err := ipt.ClearChain(natTable, Chain); err != nil {
		return fmt.Errorf("clearing chain %s: %w", Chain, err)
	}
	if err := ipt.DeleteChain(natTable, Chain); err != nil {
		return fmt.Errorf("deleting chain %s: %w", Chain, err)
	}
	return nil
}

// routeLocalnetPath is where the kernel lets DNAT to 127.0.0.0/8 through.
var routeLocalnetPath = "/proc/sys/net/ipv4/conf/all/route_localnet"

// enableRouteLocalnet sets route_localnet=1 unless it already is.
func enableRouteLocalnet() error {
	cur, err := os.ReadFile(routeLocalnetPath)
	if err == nil && strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	if err := os.WriteFile(routeLocalnetPath, []byte("1"), 0o644); err != nil {
		return errors.Join(fmt.Errorf("setting %s=1 (needed to redirect to a loopback address)", routeLocalnetPath), err)
	}
	return nil
}
