package intercept

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

const (
	natTable    = "nat"
	filterTable = "filter"
	prerouting  = "PREROUTING"
	input       = "INPUT"
	// Chain holds the interception rules; PREROUTING jumps to it first.
	Chain = "aad-metadata"
	// GuardChain, in the filter table, lets only the node's own DNAT from
	// the metadata address reach NMI's listen port, and with a loopback
	// target drops what route_localnet would otherwise let through to the
	// node's loopback services; INPUT jumps to it first.
	GuardChain = "aad-metadata-guard"
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

// managedChain is a chain NMI owns and the built-in chain that jumps to it
// first.
type managedChain struct {
	table, name, hook string
	// rules in the exact form `iptables -S` prints them, without "-A name",
	// so that the periodic check can compare text.
	rules [][]string
}

func (c managedChain) jump() []string { return []string{"-j", c.name} }

// chains are the chains NMI keeps, in the order they are written: the
// guard, then the interception, so that nothing is redirected to the
// listen port (or to loopback) before it is guarded.
func (i Interception) chains() ([]managedChain, error) {
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
	metadataPort := strconv.Itoa(i.MetadataPort)
	listen := []string{"-d", host + "/32", "-p", "tcp", "-m", "tcp", "--dport", port}
	var guard [][]string
	if i.LoopbackTarget() {
		// route_localnet=1, which the loopback DNAT target needs, would let
		// a pod (NET_RAW, or a route to the node) reach the node's
		// localhost-only services (CVE-2020-8558); kube-proxy guards the
		// same way.
		guard = append(guard, []string{"!", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"})
	}
	// The listen port answers by source address, so it must see only what
	// the interception sent it: a connection straight to it would skip the
	// anti-spoofing chain (which matches the metadata address), and let pods
	// of other nodes, unknown here, wait on it. Every packet of a
	// connection the DNAT redirected carries the metadata address as its
	// original destination; the node's own processes (-i lo) may connect.
	guard = append(guard,
		slices.Concat(listen, []string{"-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", i.MetadataIP, "--ctorigdstport", metadataPort, "-j", "RETURN"}),
		slices.Concat(listen[:2], []string{"!", "-i", "lo"}, listen[2:], []string{"-j", "DROP"}),
		[]string{"-j", "RETURN"})
	interception := [][]string{
		{"!", "-s", "127.0.0.1/32", "-d", i.MetadataIP + "/32", "-p", "tcp", "-m", "tcp", "--dport", metadataPort,
			"-j", "DNAT", "--to-destination", net.JoinHostPort(host, port)},
		{"-j", "RETURN"},
	}
	return []managedChain{
		{table: filterTable, name: GuardChain, hook: input, rules: guard},
		{table: natTable, name: Chain, hook: prerouting, rules: interception},
	}, nil
}

// LoopbackTarget reports whether the DNAT target is a loopback address, which
// needs route_localnet.
func (i Interception) LoopbackTarget() bool {
	host, _, err := net.SplitHostPort(i.ListenAddress)
	return err == nil && net.ParseIP(host).IsLoopback()
}

// EnsureRules makes the tables hold exactly the interception and its guard:
// each chain with its rules, and one jump to it as its hook's first rule. It
// reports whether anything had to change.
func EnsureRules(ipt IPTables, i Interception) (changed bool, err error) {
	chains, err := i.chains()
	if err != nil {
		return false, err
	}
	for _, c := range chains {
		ch, err := ensureChain(ipt, c)
		if err != nil {
			return false, err
		}
		changed = changed || ch
	}
	return changed, nil
}

// ensureChain writes c's rules and its jump where they differ, new before
// old, so that there is never a moment where the hook does not lead to a
// complete chain: repairing or taking over a chain (an earlier NMI's, with
// the same name) must not let a pod's metadata traffic through to IMDS.
func ensureChain(ipt IPTables, c managedChain) (changed bool, err error) {
	got, err := chainSpecs(ipt, c.table, c.name)
	if err != nil {
		return false, err
	}
	if !slices.EqualFunc(got, c.rules, slices.Equal) {
		changed = true
		if err := replaceRules(ipt, c, len(got)); err != nil {
			return false, err
		}
	}
	hook, err := chainSpecs(ipt, c.table, c.hook)
	if err != nil {
		return false, err
	}
	jump := c.jump()
	if len(hook) == 0 || !slices.Equal(hook[0], jump) {
		changed = true
		if err := ipt.Insert(c.table, c.hook, 1, jump...); err != nil {
			return false, fmt.Errorf("adding jump to %s at the top of %s: %w", c.name, c.hook, err)
		}
		hook = slices.Insert(hook, 0, jump)
	}
	// Other jumps to the chain (a duplicate, or an earlier NMI's with a
	// comment) go once the top one is in, bottom up so positions hold.
	for i := len(hook) - 1; i > 0; i-- {
		if !jumpsTo(hook[i], c.name) {
			continue
		}
		changed = true
		spec := hook[i]
		if slices.Equal(spec, jump) {
			// Deleting by spec would remove the top one.
			spec = []string{strconv.Itoa(i + 1)}
		}
		if err := ipt.Delete(c.table, c.hook, spec...); err != nil {
			return false, fmt.Errorf("removing another jump to %s from %s: %w", c.name, c.hook, err)
		}
	}
	return changed, nil
}

// replaceRules puts c's rules into its chain in place of the n it holds:
// the new rules go in at the top, then the old ones, by then below the new
// final RETURN, are deleted. A new chain is created and filled before any
// jump leads to it.
func replaceRules(ipt IPTables, c managedChain, n int) error {
	if n == 0 {
		// ClearChain creates the chain when missing.
		if err := ipt.ClearChain(c.table, c.name); err != nil {
			return fmt.Errorf("creating chain %s: %w", c.name, err)
		}
		for _, r := range c.rules {
			if err := ipt.Append(c.table, c.name, r...); err != nil {
				return fmt.Errorf("adding rule to %s: %w", c.name, err)
			}
		}
		return nil
	}
	for i, r := range c.rules {
		if err := ipt.Insert(c.table, c.name, i+1, r...); err != nil {
			return fmt.Errorf("adding rule to %s: %w", c.name, err)
		}
	}
	// The chain is NMI's own: no one else's rules shift the positions.
	for range n {
		if err := ipt.Delete(c.table, c.name, strconv.Itoa(len(c.rules)+1)); err != nil {
			return fmt.Errorf("removing an old rule from %s: %w", c.name, err)
		}
	}
	return nil
}

// jumpsTo reports whether rule's target is chain.
func jumpsTo(rule []string, chain string) bool {
	i := slices.Index(rule, "-j")
	return i >= 0 && i+1 < len(rule) && rule[i+1] == chain
}

// chainSpecs lists a chain's rules as argument lists, without "-A chain"; a
// missing chain has none.
func chainSpecs(ipt IPTables, table, chain string) ([][]string, error) {
	exists, err := ipt.ChainExists(table, chain)
	if err != nil {
		return nil, fmt.Errorf("looking for chain %s: %w", chain, err)
	}
	if !exists {
		return nil, nil
	}
	lines, err := ipt.List(table, chain)
	if err != nil {
		return nil, fmt.Errorf("listing chain %s: %w", chain, err)
	}
	var specs [][]string
	for _, l := range lines {
		f := splitRule(l)
		if len(f) >= 2 && f[0] == "-A" && f[1] == chain {
			specs = append(specs, f[2:])
		}
	}
	return specs, nil
}

// splitRule splits a line of `iptables -S` into arguments: an argument
// with spaces (a comment) is printed in double quotes, with \" and \\
// escaping within.
func splitRule(line string) []string {
	var (
		args    []string
		cur     strings.Builder
		inArg   bool
		quoted  bool
		escaped bool
	)
	for _, r := range line {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case quoted && r == '\\':
			escaped = true
		case r == '"':
			quoted, inArg = !quoted, true
		case r == ' ' && !quoted:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}

// RemoveRules deletes the jumps and the chains: uninstall only, since
// without them pods reach IMDS directly. The interception goes before the
// guard, so that the guard never goes while the DNAT stays.
func RemoveRules(ipt IPTables) error {
	for _, c := range []managedChain{{table: mangleTable, name: SpoofChain, hook: prerouting}, {table: natTable, name: Chain, hook: prerouting}, {table: filterTable, name: GuardChain, hook: input}} {
		if err := removeChain(ipt, c); err != nil {
			return err
		}
	}
	return nil
}

func removeChain(ipt IPTables, c managedChain) error {
	// iptables refuses a jump to a missing chain, so without the chain there
	// is nothing to remove (and -C would fail).
	exists, err := ipt.ChainExists(c.table, c.name)
	if err != nil || !exists {
		return err
	}
	for {
		ok, err := ipt.Exists(c.table, c.hook, c.jump()...)
		if err != nil {
			return fmt.Errorf("looking for jump to %s: %w", c.name, err)
		}
		if !ok {
			break
		}
		if err := ipt.Delete(c.table, c.hook, c.jump()...); err != nil {
			return fmt.Errorf("removing jump to %s: %w", c.name, err)
		}
	}
	if err := ipt.ClearChain(c.table, c.name); err != nil {
		return fmt.Errorf("clearing chain %s: %w", c.name, err)
	}
	if err := ipt.DeleteChain(c.table, c.name); err != nil {
		return fmt.Errorf("deleting chain %s: %w", c.name, err)
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
		err = errors.Join(fmt.Errorf("setting %s=1 (needed to redirect to a loopback address)", routeLocalnetPath), err)
		if errors.Is(err, syscall.EROFS) {
			// An unprivileged container's /proc/sys is read-only.
			err = fmt.Errorf("%w; in a container without privileges, listen on the node's address instead (--listen-address=$(HOST_IP):2579, the chart's default)", err)
		}
		return err
	}
	return nil
}
