package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// process is a program the sandbox started inside one of its namespaces.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// startIn starts cmd with its network namespace set to netns, output to
// logPath. The child gets its own process group (so stop reaches its
// children) and SIGKILL when the sandbox dies.
func startIn(netns ns.NetNS, name, logPath string, cmd *exec.Cmd) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	if cmd.Stdout == nil {
		cmd.Stdout = logf
	}
	if cmd.Stderr == nil {
		cmd.Stderr = logf
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	// The child starts in the namespace of the thread that forks it, and
	// Pdeathsig fires when that thread ends: fork from the namespace's
	// long-lived thread.
	if err := forkThread(netns).run(cmd.Start); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, and SIGKILL after grace.
func (p *process) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	var exit *exec.ExitError
	if p.err != nil && !errors.As(p.err, &exit) {
		return fmt.Errorf("%s: %w", p.name, p.err)
	}
	return nil
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

// endThread lets the namespace's fork thread exit; call it only once every
// process forked from it is gone.
func endThread(path string) {
	threadsMu.Lock()
	defer threadsMu.Unlock()
	if t, ok := threads[path]; ok {
		close(t.reqs)
		delete(threads, path)
	}
}
