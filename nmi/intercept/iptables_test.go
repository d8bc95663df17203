package intercept

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// fakeIPTables keeps the nat and filter tables as `iptables -S` lines per
// chain; NMI's chains have distinct names, so the table is not kept.
type fakeIPTables struct {
	chains map[string][]string // chain -> rules without "-A chain"
	calls  []string
	// windows records the writes after which traffic that was
	// intercepted (guarded) before was not any more.
	windows []string
	watch   bool
}

func newFakeIPTables(chains map[string][]string) *fakeIPTables {
	f := &fakeIPTables{chains: map[string][]string{prerouting: nil, input: nil}}
	for k, v := range chains {
		f.chains[k] = v
	}
	return f
}

// record logs a call; with watch, the state the call leaves must still
// intercept and guard: it is checked after the call, in after.
func (f *fakeIPTables) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

// after checks the state a write left.
func (f *fakeIPTables) after() {
	if !f.watch {
		return
	}
	if !f.leads(prerouting, Chain, "-j DNAT") || !f.leads(input, GuardChain, "-j DROP") {
		f.windows = append(f.windows, f.calls[len(f.calls)-1])
	}
}

// leads reports whether hook jumps to chain and chain reaches a rule
// ending in target before its RETURN.
func (f *fakeIPTables) leads(hook, chain, target string) bool {
	if !slices.ContainsFunc(f.chains[hook], func(r string) bool { return strings.HasSuffix(r, "-j "+chain) }) {
		return false
	}
	for _, r := range f.chains[chain] {
		if strings.Contains(r, target) {
			return true
		}
		if r == ret {
			return false
		}
	}
	return false
}

func (f *fakeIPTables) List(_, chain string) ([]string, error) {
	rules, ok := f.chains[chain]
	if !ok {
		return nil, fmt.Errorf("no chain %s", chain)
	}
	out := []string{"-N " + chain}
	for _, r := range rules {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

func (f *fakeIPTables) ChainExists(_, chain string) (bool, error) {
	_, ok := f.chains[chain]
	return ok, nil
}

func (f *fakeIPTables) ClearChain(_, chain string) error {
	f.record("clear %s", chain)
	f.chains[chain] = nil
	f.after()
	return nil
}

func (f *fakeIPTables) DeleteChain(_, chain string) error {
	f.record("delete-chain %s", chain)
	delete(f.chains, chain)
	return nil
}

func (f *fakeIPTables) Insert(_, chain string, pos int, spec ...string) error {
	f.record("insert %s %d %s", chain, pos, strings.Join(spec, " "))
	f.chains[chain] = slices.Insert(f.chains[chain], pos-1, strings.Join(spec, " "))
	f.after()
	return nil
}

func (f *fakeIPTables) Append(_, chain string, spec ...string) error {
	f.record("append %s %s", chain, strings.Join(spec, " "))
	f.chains[chain] = append(f.chains[chain], strings.Join(spec, " "))
	f.after()
	return nil
}

func (f *fakeIPTables) Exists(_, chain string, spec ...string) (bool, error) {
	return slices.Contains(f.chains[chain], strings.Join(spec, " ")), nil
}

func (f *fakeIPTables) Delete(_, chain string, spec ...string) error {
	f.record("delete %s %s", chain, strings.Join(spec, " "))
	// Rules are kept as iptables -S prints them, quotes included.
	i := slices.IndexFunc(f.chains[chain], func(r string) bool { return slices.Equal(splitRule(r), spec) })
	if n, err := strconv.Atoi(strings.Join(spec, " ")); err == nil {
		i = n - 1 // iptables -D chain <rulenum>
	}
	if i < 0 || i >= len(f.chains[chain]) {
		return fmt.Errorf("no such rule in %s", chain)
	}
	f.chains[chain] = slices.Delete(f.chains[chain], i, i+1)
	f.after()
	return nil
}

const (
	dnat      = "! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579"
	ret       = "-j RETURN"
	jump      = "-j aad-metadata"
	guardDrop = "! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
	// The listen port takes only what the DNAT sent it (and the node's own).
	listenDNATed = "-d 127.0.0.1/32 -p tcp -m tcp --dport 2579 -m conntrack --ctstate DNAT --ctorigdst 169.254.169.254 --ctorigdstport 80 -j RETURN"
	listenDrop   = "-d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 2579 -j DROP"
	guardJump    = "-j aad-metadata-guard"
	kube         = "-m comment --comment kubernetes -j KUBE-SERVICES"
	stale        = "! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:9999"
	// An earlier NMI's chain, as aad-pod-identity 1.x writes it: DNAT to the
	// node's address, its own calls let through, and a commented jump.
	legacyDNAT   = "! -s 10.240.0.4/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.240.0.4:2579"
	legacyAccept = "-s 10.240.0.4/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j ACCEPT"
	legacyJump   = "-m comment --comment \"AAD Pod Identity\" -j aad-metadata"
)

func TestEnsureRules(t *testing.T) {
	guard := []string{guardDrop, listenDNATed, listenDrop, ret}
	want := map[string][]string{prerouting: {jump, kube}, Chain: {dnat, ret}, input: {guardJump}, GuardChain: guard}
	guarded := func(nat map[string][]string) map[string][]string {
		nat[input], nat[GuardChain] = []string{guardJump}, guard
		return nat
	}
	tests := []struct {
		name    string
		initial map[string][]string
		changed bool
	}{
		{"fresh node", map[string][]string{prerouting: {kube}}, true},
		{"already right", guarded(map[string][]string{prerouting: {jump, kube}, Chain: {dnat, ret}}), false},
		{"guard missing", map[string][]string{prerouting: {jump, kube}, Chain: {dnat, ret}}, true},
		{"guard emptied", map[string][]string{prerouting: {jump, kube}, Chain: {dnat, ret}, input: {guardJump}, GuardChain: nil}, true},
		{"guard of an earlier NMI, without the listen port", map[string][]string{prerouting: {jump, kube}, Chain: {dnat, ret}, input: {guardJump}, GuardChain: {guardDrop, ret}}, true},
		{"chain emptied", map[string][]string{prerouting: {jump, kube}, Chain: nil}, true},
		{"stale target", guarded(map[string][]string{prerouting: {jump, kube}, Chain: {stale, ret}}), true},
		{"extra rule in chain", guarded(map[string][]string{prerouting: {jump, kube}, Chain: {dnat, "-j ACCEPT", ret}}), true},
		{"jump below another rule", guarded(map[string][]string{prerouting: {kube, jump}, Chain: {dnat, ret}}), true},
		{"jump twice", guarded(map[string][]string{prerouting: {jump, kube, jump}, Chain: {dnat, ret}}), true},
		{"jump missing", map[string][]string{prerouting: {kube}, Chain: {dnat, ret}}, true},
		{"an earlier NMI's chain and jump", guarded(map[string][]string{prerouting: {legacyJump, kube}, Chain: {legacyDNAT, legacyAccept, ret}}), true},
		{"an earlier NMI's jump below ours", guarded(map[string][]string{prerouting: {jump, kube, legacyJump}, Chain: {dnat, ret}}), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ipt := newFakeIPTables(tt.initial)
			// Traffic intercepted and guarded before stays so at every step.
			ipt.watch = ipt.leads(prerouting, Chain, "-j DNAT") && ipt.leads(input, GuardChain, "-j DROP")
			changed, err := EnsureRules(ipt, Interception{MetadataIP: "169.254.169.254", MetadataPort: 80, ListenAddress: "127.0.0.1:2579"})
			if err != nil || changed != tt.changed {
				t.Fatalf("changed=%v err=%v; want changed=%v", changed, err, tt.changed)
			}
			if len(ipt.windows) > 0 {
				t.Fatalf("interception or guard lost after %q (calls %q)", ipt.windows, ipt.calls)
			}
			for chain, rules := range want {
				if !slices.Equal(ipt.chains[chain], rules) {
					t.Fatalf("%s = %q, want %q (calls %q)", chain, ipt.chains[chain], rules, ipt.calls)
				}
			}
			if !tt.changed && len(ipt.calls) != 0 {
				t.Fatalf("unchanged rules still wrote: %q", ipt.calls)
			}
			// A second check right after finds nothing to do.
			ipt.calls = nil
			if changed, err := EnsureRules(ipt, Interception{MetadataIP: "169.254.169.254", MetadataPort: 80, ListenAddress: "127.0.0.1:2579"}); changed || err != nil {
				t.Fatalf("second pass: changed=%v err=%v calls=%q", changed, err, ipt.calls)
			}
		})
	}
}

func TestEnsureRulesRejectsBadInput(t *testing.T) {
	for _, i := range []Interception{
		{MetadataIP: "metadata", MetadataPort: 80, ListenAddress: "127.0.0.1:2579"},
		{MetadataIP: "fd00::1", MetadataPort: 80, ListenAddress: "127.0.0.1:2579"},
		{MetadataIP: "169.254.169.254", MetadataPort: 0, ListenAddress: "127.0.0.1:2579"},
		{MetadataIP: "169.254.169.254", MetadataPort: 80, ListenAddress: ":2579"},
		{MetadataIP: "169.254.169.254", MetadataPort: 80, ListenAddress: "localhost"},
	} {
		ipt := newFakeIPTables(nil)
		if _, err := EnsureRules(ipt, i); err == nil || len(ipt.calls) != 0 {
			t.Errorf("%+v: err=%v calls=%q; want an error and no change", i, err, ipt.calls)
		}
	}
}

func TestRemoveRules(t *testing.T) {
	ipt := newFakeIPTables(map[string][]string{prerouting: {jump, kube, jump}, Chain: {dnat, ret}, input: {guardJump}, GuardChain: {guardDrop, ret}})
	if err := RemoveRules(ipt); err != nil {
		t.Fatal(err)
	}
	_, nat := ipt.chains[Chain]
	_, filter := ipt.chains[GuardChain]
	if nat || filter || !slices.Equal(ipt.chains[prerouting], []string{kube}) || len(ipt.chains[input]) != 0 {
		t.Fatalf("left %q", ipt.chains)
	}
	if err := RemoveRules(ipt); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}
}

func TestLoopbackTarget(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:2579": true, "10.0.0.4:2579": false, "bad": false} {
		if got := (Interception{ListenAddress: addr}).LoopbackTarget(); got != want {
			t.Errorf("%s: got %v", addr, got)
		}
	}
}

// The listen port is guarded for every target, the node's loopback services
// for a loopback target only, and the guard goes in before the redirection.
func TestGuardRules(t *testing.T) {
	tests := []struct {
		listen string
		guard  []string
	}{
		{"10.0.0.4:2579", []string{
			"-d 10.0.0.4/32 -p tcp -m tcp --dport 2579 -m conntrack --ctstate DNAT --ctorigdst 169.254.169.254 --ctorigdstport 80 -j RETURN",
			"-d 10.0.0.4/32 ! -i lo -p tcp -m tcp --dport 2579 -j DROP",
			ret,
		}},
		{"127.0.0.1:2579", []string{guardDrop, listenDNATed, listenDrop, ret}},
	}
	for _, tt := range tests {
		t.Run(tt.listen, func(t *testing.T) {
			ipt := newFakeIPTables(nil)
			if _, err := EnsureRules(ipt, Interception{MetadataIP: "169.254.169.254", MetadataPort: 80, ListenAddress: tt.listen}); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ipt.chains[GuardChain], tt.guard) || !slices.Equal(ipt.chains[input], []string{guardJump}) {
				t.Fatalf("guard %q, INPUT %q; want %q", ipt.chains[GuardChain], ipt.chains[input], tt.guard)
			}
			g := slices.Index(ipt.calls, "insert INPUT 1 "+guardJump)
			d := slices.IndexFunc(ipt.calls, func(c string) bool {
				return strings.HasPrefix(c, "append aad-metadata ") && strings.Contains(c, "DNAT")
			})
			if g < 0 || d < 0 || g > d {
				t.Errorf("guard's jump at call %d, DNAT at %d: want the guard first (%q)", g, d, ipt.calls)
			}
		})
	}
}

func TestSplitRule(t *testing.T) {
	for line, want := range map[string][]string{
		`-A PREROUTING -j aad-metadata`:                                         {"-A", "PREROUTING", "-j", "aad-metadata"},
		`-A PREROUTING -m comment --comment "AAD Pod Identity" -j aad-metadata`: {"-A", "PREROUTING", "-m", "comment", "--comment", "AAD Pod Identity", "-j", "aad-metadata"},
		`-A X -m comment --comment "say \"hi\" \\ there" -j RETURN`:             {"-A", "X", "-m", "comment", "--comment", `say "hi" \ there`, "-j", "RETURN"},
		`-A X -m comment --comment "" -j RETURN`:                                {"-A", "X", "-m", "comment", "--comment", "", "-j", "RETURN"},
		`-A KUBE-SERVICES -m comment --comment kubernetes  -j KUBE-NODEPORTS`:   {"-A", "KUBE-SERVICES", "-m", "comment", "--comment", "kubernetes", "-j", "KUBE-NODEPORTS"},
	} {
		if got := splitRule(line); !slices.Equal(got, want) {
			t.Errorf("splitRule(%s) = %q, want %q", line, got, want)
		}
	}
}
