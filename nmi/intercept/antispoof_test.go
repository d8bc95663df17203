package intercept

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Results as containerd's libcni caches them: the bridge plugin reports the
// bridge, the host veth and the pod's interface; ptp the host veth and the
// pod's.
const (
	bridgeResult = `{"kind":"cniCacheV1","containerId":"c1","ifName":"eth0","networkName":"k8s","result":{"cniVersion":"1.0.0",
"interfaces":[{"name":"cni0","mac":"aa:00:00:00:00:01"},{"name":"veth1","mac":"aa:00:00:00:00:02"},{"name":"eth0","mac":"aa:00:00:00:00:03","sandbox":"/var/run/netns/cni-1"}],
"ips":[{"address":"10.244.0.5/24","gateway":"10.244.0.1","interface":2},{"address":"fd00::5/64","interface":2}]}}`
	ptpResult = `{"kind":"cniCacheV1","result":{"cniVersion":"0.4.0","interfaces":[{"name":"veth2"},{"name":"eth0","sandbox":"/var/run/netns/cni-2"}],
"ips":[{"version":"4","address":"10.244.1.7/32","interface":1}]}}`
	// A leftover result of a sandbox whose veth is gone, holding an
	// address that a newer pod now has.
	staleResult = `{"kind":"cniCacheV1","result":{"interfaces":[{"name":"cni0"},{"name":"veth-old"},{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.244.0.5/24","interface":2}]}}`
)

func TestReadCNICache(t *testing.T) {
	links := map[string]linkKind{"cni0": linkBridge, "veth1": linkBridgePort, "veth2": linkRouted, "veth3": linkBridgePort}
	lookup := func(name string) (linkKind, error) { return links[name], nil }
	write := func(dir, name, content string, age time.Duration) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(-age)
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		files map[string]string
		want  []podLink
	}{
		{name: "no cache directory yet", files: nil, want: nil},
		{
			name:  "bridge and routed results; IPv6 addresses and unreadable files skipped",
			files: map[string]string{"k8s-c1-eth0": bridgeResult, "k8s-c2-eth0": ptpResult, "garbage": "{not json", "old-format": `{"ip4":{"ip":"10.0.0.9/24"}}`},
			want:  []podLink{{ip: "10.244.0.5", hostIf: "veth1", bridged: true}, {ip: "10.244.1.7", hostIf: "veth2"}},
		},
		{
			name:  "a leftover result whose veth is gone does not take the address",
			files: map[string]string{"k8s-c1-eth0": bridgeResult, "k8s-c0-eth0": staleResult},
			want:  []podLink{{ip: "10.244.0.5", hostIf: "veth1", bridged: true}},
		},
		{
			name: "an address in two live results goes to the newer",
			files: map[string]string{"k8s-c1-eth0": bridgeResult,
				"k8s-c3-eth0": strings.ReplaceAll(bridgeResult, "veth1", "veth3")},
			want: []podLink{{ip: "10.244.0.5", hostIf: "veth3", bridged: true}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "results")
			if tc.files != nil {
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			for name, content := range tc.files {
				// The file named c3 is the newest, c0 the oldest.
				age := time.Minute
				if strings.Contains(name, "c3") {
					age = 0
				}
				write(dir, name, content, age)
			}
			got, err := readCNICache(dir, lookup)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSpoofChainRules(t *testing.T) {
	i := Interception{MetadataIP: "169.254.169.254", MetadataPort: 80, ListenAddress: "127.0.0.1:2579"}
	c := i.spoofChain([]podLink{{ip: "10.244.0.5", hostIf: "veth1", bridged: true}, {ip: "10.244.1.7", hostIf: "veth2"}})
	if c.table != mangleTable || c.name != SpoofChain || c.hook != prerouting {
		t.Errorf("chain %s/%s hooked from %s", c.table, c.name, c.hook)
	}
	// As `iptables -S` prints them (checked against both backends), so that
	// the periodic check does not rewrite an unchanged chain.
	want := []string{
		"-s 10.244.0.5/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m physdev --physdev-is-in ! --physdev-in veth1 -j DROP",
		"-s 10.244.1.7/32 -d 169.254.169.254/32 ! -i veth2 -p tcp -m tcp --dport 80 -j DROP",
		"-j RETURN",
	}
	var got []string
	for _, r := range c.rules {
		got = append(got, strings.Join(r, " "))
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rules\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
