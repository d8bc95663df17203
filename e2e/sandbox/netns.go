package sandbox

import (
	"errors"
	"strings"

	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// Prefix starts the name of every network namespace the sandbox creates, so
// `ip netns list` shows them and `sandbox down` finds leftovers.
const Prefix = testns.Prefix + "sbx-"

// ListNetNS returns the names of the sandbox namespaces whose name starts
// with prefix.
func ListNetNS(prefix string) ([]string, error) {
	names, err := testns.List(Prefix)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out, nil
}

// Clean removes every sandbox namespace whose name starts with prefix and the
// processes running in them, and the real nodes' cgroups with their
// containers: the way out after a sandbox process was killed with SIGKILL.
func Clean(prefix string) error {
	names, err := ListNetNS(prefix)
	if err != nil {
		return err
	}
	errs := []error{cleanCgroups(prefix)}
	for _, n := range names {
		errs = append(errs, testns.Delete(n))
	}
	return errors.Join(errs...)
}

// NetNSPrefix is the name prefix of every namespace of the sandbox with id.
func NetNSPrefix(id string) string { return Prefix + id + "-" }
