// Package netns creates, enters and removes the named network namespaces the
// root-only tests run in (NMI's iptables test and the sandbox), without
// touching the machine's own namespace.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// Prefix starts every namespace name this package creates or deletes, so
// that `ip netns list` shows what the tests own and nothing else is removed.
const Prefix = "aadpi-"

// Dir is where iproute2 keeps named network namespaces.
const Dir = "/var/run/netns"

// Path is where the namespace called name is mounted.
func Path(name string) string { return filepath.Join(Dir, name) }

// Open returns the existing namespace called name.
func Open(name string) (ns.NetNS, error) { return ns.GetNS(Path(name)) }

// Create creates a named network namespace, as `ip netns add` does: a file
// under /var/run/netns bind-mounted from a thread that unshared its network
// namespace.
func Create(name string) (ns.NetNS, error) {
	if !strings.HasPrefix(name, Prefix) {
		return nil, fmt.Errorf("network namespace %q lacks the prefix %q", name, Prefix)
	}
	if err := ensureDir(); err != nil {
		return nil, err
	}
	path := Path(name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", path, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: Go ends it with the goroutine, so no
		// other goroutine ever runs in the new namespace by accident.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mounting %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return ns.GetNS(path)
}

// ensureDir makes /var/run/netns a shared mount point, as iproute2 does, so
// namespaces mounted there are visible to other mount namespaces.
func ensureDir() error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s: %w", Dir, err)
		}
		err = unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("making %s shared: %w", Dir, err)
	}
	return nil
}

// Delete kills every process still inside the namespace, then unmounts and
// removes it; its interfaces go with it. A missing namespace is no error.
func Delete(name string) error {
	if !strings.HasPrefix(name, Prefix) {
		return fmt.Errorf("network namespace %q lacks the prefix %q", name, Prefix)
	}
	path := Path(name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	killProcessesIn(path)
	endThread(path)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// List returns the names of the namespaces whose name starts with prefix,
// which must start with Prefix.
func List(prefix string) ([]string, error) {
	if !strings.HasPrefix(prefix, Prefix) {
		return nil, fmt.Errorf("prefix %q does not start with %q", prefix, Prefix)
	}
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// killProcessesIn SIGKILLs every process whose network namespace is the one
// mounted at path, and waits briefly for them to go.
func killProcessesIn(path string) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	for range 50 {
		found := false
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			link, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net"))
			if err != nil || link != want {
				continue
			}
			found = true
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if !found {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
