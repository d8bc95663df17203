package framework

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Shared is a package's one control plane, started by the first test that
// asks for it: tests that need none run without it, and `go test -run`
// of such a test passes on a machine without the binaries.
type Shared struct {
	Options Options
	// Setup runs once, right after the start: RBAC or objects every test
	// of the package relies on.
	Setup func(*envtest.Environment, *rest.Config) error

	once sync.Once
	env  *envtest.Environment
	cfg  *rest.Config
	err  error
}

var (
	startedMu sync.Mutex
	started   []*envtest.Environment
)

// Start returns the running environment, starting it on first use; it fails
// the test when the control plane cannot start.
func (s *Shared) Start(t testing.TB) (*envtest.Environment, *rest.Config) {
	t.Helper()
	s.once.Do(func() {
		if s.env, s.err = NewEnvironment(s.Options); s.err != nil {
			return
		}
		startedMu.Lock()
		// Stop also ends the processes of a start that failed half-way.
		started = append(started, s.env)
		startedMu.Unlock()
		if s.cfg, s.err = s.env.Start(); s.err != nil {
			s.err = fmt.Errorf("starting envtest: %w", s.err)
			return
		}
		if s.Setup != nil {
			s.err = s.Setup(s.env, s.cfg)
		}
	})
	if s.err != nil {
		t.Fatalf("control plane: %v", s.err)
	}
	return s.env, s.cfg
}

// Run runs a package's tests and then stops the control planes they
// started: call it from TestMain.
func Run(m *testing.M) int {
	code := m.Run()
	startedMu.Lock()
	defer startedMu.Unlock()
	var errs []error
	for _, env := range started {
		errs = append(errs, env.Stop())
	}
	started = nil
	if err := errors.Join(errs...); err != nil {
		fmt.Println("stopping envtest:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}
