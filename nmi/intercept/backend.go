package intercept

import (
	"bytes"
	"fmt"
	"os/exec"

	"github.com/coreos/go-iptables/iptables"
)

// Backend names an iptables binary: the node's kernel keeps legacy
// (x_tables) and nf_tables rules apart, and NMI must write into the one the
// node's kube-proxy and kubelet use, or its DNAT may never be evaluated
// where it matters (and an image's default may not be the node's).
type Backend string

// Backends.
const (
	BackendAuto   Backend = "auto"
	BackendLegacy Backend = "legacy"
	BackendNFT    Backend = "nft"
	// BackendPath is whatever `iptables` on PATH is.
	BackendPath Backend = "path"
)

// hintChains are the chains whose presence says which backend the node
// uses: kubelet and kube-proxy create them in the mangle table (the
// signal kube-proxy's own iptables-wrapper reads).
var hintChains = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// Runner runs a command and returns its standard output; tests replace it
// to run inside a network namespace.
type Runner func(name string, args ...string) ([]byte, error)

// ExecRunner runs commands in NMI's own network namespace.
func ExecRunner(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).Output()
}

// DetectBackend picks the backend the node uses: the one holding a hint
// chain, else the one holding more rules; with no signal (or only one
// backend installed), `iptables` on PATH. reason says why, for the log.
func DetectBackend(run Runner) (b Backend, reason string) {
	rules := map[Backend]int{}
	for _, b := range []Backend{BackendLegacy, BackendNFT} {
		mangle, err := run("iptables-"+string(b)+"-save", "-t", "mangle")
		if err != nil {
			return BackendPath, fmt.Sprintf("iptables-%s-save unavailable: %v", b, err)
		}
		for _, c := range hintChains {
			if bytes.Contains(mangle, []byte(":"+c+" ")) {
				return b, "chain " + c + " is in the " + string(b) + " mangle table"
			}
		}
		all, err := run("iptables-" + string(b) + "-save")
		if err != nil {
			return BackendPath, fmt.Sprintf("iptables-%s-save unavailable: %v", b, err)
		}
		for _, line := range bytes.Split(all, []byte("\n")) {
			if bytes.HasPrefix(line, []byte("-A ")) {
				rules[b]++
			}
		}
	}
	switch {
	case rules[BackendLegacy] > rules[BackendNFT]:
		return BackendLegacy, fmt.Sprintf("%d legacy rules, %d nf_tables rules", rules[BackendLegacy], rules[BackendNFT])
	case rules[BackendNFT] > rules[BackendLegacy]:
		return BackendNFT, fmt.Sprintf("%d nf_tables rules, %d legacy rules", rules[BackendNFT], rules[BackendLegacy])
	}
	return BackendPath, "no rules in either backend"
}

// NewIPTables returns an iptables client for backend (auto: detected with
// run).
func NewIPTables(backend Backend, run Runner) (*iptables.IPTables, Backend, string, error) {
	reason := "chosen by flag"
	switch backend {
	case BackendAuto:
		backend, reason = DetectBackend(run)
	case BackendLegacy, BackendNFT, BackendPath:
	default:
		return nil, "", "", fmt.Errorf("iptables backend %q: want auto, legacy, nft or path", backend)
	}
	var (
		ipt *iptables.IPTables
		err error
	)
	if backend == BackendPath {
		ipt, err = iptables.New()
	} else {
		ipt, err = iptables.New(iptables.Path("iptables-" + string(backend)))
	}
	if err != nil {
		return nil, "", "", fmt.Errorf("finding iptables (%s): %w", backend, err)
	}
	return ipt, backend, reason, nil
}
