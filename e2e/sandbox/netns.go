package sandbox

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

// Prefix starts the name of every network namespace the sandbox creates, so
// `ip netns list` shows them and `sandbox down` finds leftovers.
const Prefix = "aadpi-sbx-"

// netnsDir is where iproute2 keeps named network namespaces.
const netnsDir = "/var/run/netns"

// createNetNS creates a named network namespace, as `ip netns add` does: a
// file under /var/run/netns bind-mounted from a thread that unshared its
// network namespace.
func createNetNS(name string) (ns.NetNS, error) {
	if !strings.HasPrefix(name, Prefix) {
		return nil, fmt.Errorf("network namespace %q lacks the sandbox prefix %q", name, Prefix)
	}
	if err := ensureNetnsDir(); err != nil {
		return nil, err
	}
	path := filepath.Join(netnsDir, name)
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

// ensureNetnsDir makes /var/run/netns a shared mount point, as iproute2 does,
// so namespaces mounted there are visible to other mount namespaces.
func ensureNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("making %s shared: %w", netnsDir, err)
	}
	return nil
}

// deleteNetNS kills every process still inside the namespace, then unmounts
// and removes it; its interfaces go with it.
func deleteNetNS(name string) error {
	path := filepath.Join(netnsDir, name)
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

// ListNetNS returns the names of the sandbox namespaces whose name starts
// with prefix.
func ListNetNS(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) && strings.HasPrefix(e.Name(), Prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Clean removes every sandbox namespace whose name starts with prefix and the
// processes running in them: the way out after a sandbox process was killed
// with SIGKILL.
func Clean(prefix string) error {
	names, err := ListNetNS(prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		errs = append(errs, deleteNetNS(n))
	}
	return errors.Join(errs...)
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

// NetNSPrefix is the name prefix of every namespace of the sandbox with id.
func NetNSPrefix(id string) string { return Prefix + id + "-" }
