package netns

import (
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Start starts cmd inside netns. The child gets its own process group (so
// that signalling the group reaches its children) and SIGKILL when the test
// process dies.
func Start(netns ns.NetNS, cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	// The child starts in the namespace of the thread that forks it, and
	// Pdeathsig fires when that thread ends: fork from the namespace's
	// long-lived thread.
	return forkThread(netns).run(cmd.Start)
}

// nsThread is an OS thread that lives in one network namespace until the
// namespace is deleted, so processes forked from it keep a live parent
// thread.
type nsThread struct {
	reqs chan func()
	err  error
}

var (
	threadsMu sync.Mutex
	threads   = map[string]*nsThread{}
)

func forkThread(netns ns.NetNS) *nsThread {
	threadsMu.Lock()
	defer threadsMu.Unlock()
	if t, ok := threads[netns.Path()]; ok {
		return t
	}
	t := &nsThread{reqs: make(chan func())}
	ready := make(chan struct{})
	go func() {
		// Never unlocked: the thread ends with the goroutine.
		runtime.LockOSThread()
		t.err = netns.Set()
		close(ready)
		for f := range t.reqs {
			f()
		}
	}()
	<-ready
	threads[netns.Path()] = t
	return t
}

func (t *nsThread) run(f func() error) error {
	if t.err != nil {
		return fmt.Errorf("entering namespace: %w", t.err)
	}
	errc := make(chan error, 1)
	t.reqs <- func() { errc <- f() }
	return <-errc
}

// endThread lets the namespace's fork thread exit; Delete calls it once
// every process forked from it is gone.
func endThread(path string) {
	threadsMu.Lock()
	defer threadsMu.Unlock()
	if t, ok := threads[path]; ok {
		close(t.reqs)
		delete(threads, path)
	}
}
