// Package intercept owns NMI's iptables rules on the node: the DNAT of pods'
// metadata traffic to NMI, the guard in front of NMI's port, the
// anti-spoofing chain, and their repair and removal. It serves nothing.
package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
)

// Keeper owns the node's rules: it writes them, repairs them and, with a
// CNI cache directory, keeps the anti-spoofing chain in step with the
// node's pods. RemoveRules takes them out at uninstall.
type Keeper struct {
	IPTables     IPTables
	Interception Interception
	// CNICacheDir is libcni's results cache (/var/lib/cni/results): set,
	// metadata traffic from a pod's address that enters through another
	// interface than the pod's own veth is dropped (SpoofChain).
	CNICacheDir string
	// FlushConntrack drops tracked connections to the metadata IP once the
	// rules are in, so that none opened before them keeps bypassing them.
	FlushConntrack bool
	// SyncPeriod is how often the rules are checked and repaired.
	SyncPeriod time.Duration
	Log        logr.Logger
}

// NewKeeper validates k's interception and gives it the iptables backend
// (auto: the node's).
func NewKeeper(k Keeper, backend Backend) (*Keeper, error) {
	if _, err := k.Interception.chains(); err != nil {
		return nil, err
	}
	if k.SyncPeriod <= 0 {
		return nil, fmt.Errorf("sync period %s: want a positive duration", k.SyncPeriod)
	}
	ipt, chosen, reason, err := NewIPTables(backend, ExecRunner)
	if err != nil {
		return nil, err
	}
	k.Log.Info("iptables backend", "backend", chosen, "reason", reason)
	k.IPTables = ipt
	return &k, nil
}

// GuardsPods reports whether the rules depend on the node's pods (the
// anti-spoofing chain), so that Keep must hear of their changes.
func (k *Keeper) GuardsPods() bool { return k.CNICacheDir != "" }

// Install writes the rules; nothing may be served before it returns nil.
// The guard goes in before route_localnet is turned on, so that redirected
// packets are dropped (fail closed) until both stand.
func (k *Keeper) Install() error {
	if err := k.ensure(); err != nil {
		return fmt.Errorf("installing interception rules: %w", err)
	}
	if k.GuardsPods() {
		warnWithoutBridgeNetfilter(k.Log)
	}
	if k.FlushConntrack {
		if err := flushConntrack(k.Interception.MetadataIP); err != nil {
			k.Log.Error(err, "flushing conntrack entries; connections opened before interception keep reaching IMDS until they close")
		}
	}
	return nil
}

// Keep repairs the rules every sync period, and updates the anti-spoofing
// chain whenever podsChanged fires, until ctx ends.
func (k *Keeper) Keep(ctx context.Context, podsChanged <-chan struct{}) error {
	tick := time.NewTicker(k.SyncPeriod)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := k.ensure(); err != nil {
				k.Log.Error(err, "checking interception rules")
			}
		case <-podsChanged:
			if err := k.spoof(); err != nil {
				k.Log.Error(err, "updating anti-spoofing rules")
			}
		}
	}
}

func (k *Keeper) ensure() error {
	changed, err := EnsureRules(k.IPTables, k.Interception)
	if err != nil {
		return err
	}
	if changed {
		rulesRepairs.Inc()
		k.Log.Info("interception rules written", "chain", Chain)
	}
	if k.Interception.LoopbackTarget() {
		if err := enableRouteLocalnet(); err != nil {
			return err
		}
	}
	return k.spoof()
}

func (k *Keeper) spoof() error {
	if !k.GuardsPods() {
		return nil
	}
	pods, changed, err := EnsureSpoofRules(k.IPTables, k.Interception, k.CNICacheDir)
	if err != nil {
		return fmt.Errorf("anti-spoofing rules: %w", err)
	}
	spoofGuardedPods.Set(float64(pods))
	if changed {
		k.Log.V(1).Info("anti-spoofing rules written", "chain", SpoofChain, "pods", pods)
	}
	return nil
}

// bridgeNetfilterPath says whether bridged packets traverse iptables, which
// the physdev rules need.
var bridgeNetfilterPath = "/proc/sys/net/bridge/bridge-nf-call-iptables"

func warnWithoutBridgeNetfilter(log logr.Logger) {
	if v, err := os.ReadFile(bridgeNetfilterPath); err != nil || strings.TrimSpace(string(v)) != "1" {
		log.Error(errors.New("bridged packets do not traverse iptables (br_netfilter not loaded, or net.bridge.bridge-nf-call-iptables=0)"),
			"the anti-spoofing rules cannot see pods on bridges", "sysctl", bridgeNetfilterPath)
	}
}

// flushConntrack drops tracked connections to the metadata IP.
func flushConntrack(metadataIP string) error {
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigDstIP, net.ParseIP(metadataIP)); err != nil {
		return err
	}
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.FAMILY_V4, f)
	return err
}
