package sandbox

import (
	"context"
	"io"
	"net"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/go-logr/logr"

	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// forwarder accepts on a loopback port of the machine's own namespace and
// relays each connection to target inside the sandbox: the only way in from
// outside, and it needs no address or route in the root namespace.
type forwarder struct {
	l      net.Listener
	netns  ns.NetNS
	target string
	log    logr.Logger
	wg     sync.WaitGroup // serve and every relay

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newForwarder(listen string, netns ns.NetNS, target string, log logr.Logger) (*forwarder, error) {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	f := &forwarder{l: l, netns: netns, target: target, log: log, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *forwarder) addr() string { return f.l.Addr().String() }

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns[c] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go f.relay(c)
	}
}

func (f *forwarder) relay(c net.Conn) {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
	}()
	defer c.Close()
	up, err := testns.Dial(context.Background(), f.netns, "tcp", f.target)
	if err != nil {
		f.log.V(1).Info("forward dial failed", "target", f.target, "error", err.Error())
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	// TLS and HTTP/2 do not half-close: once either side ends, end both.
	<-done
	c.Close()
	up.Close()
	<-done
}

// close stops accepting, cuts every relayed connection (long watches
// included) and waits for the relays to end.
func (f *forwarder) close() {
	f.l.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
