package nmi

import (
	"net"
	"sync"
)

// limitPerIP wraps l so that at most max connections from one remote
// address are open at a time; further ones are closed as soon as they are
// accepted. max <= 0 returns l unchanged.
func limitPerIP(l net.Listener, max int) net.Listener {
	if max <= 0 {
		return l
	}
	return &perIPListener{Listener: l, max: max, open: map[string]int{}}
}

type perIPListener struct {
	net.Listener
	max  int
	mu   sync.Mutex
	open map[string]int
}

func (l *perIPListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteHost(c.RemoteAddr().String())
		l.mu.Lock()
		over := l.open[ip] >= l.max
		if !over {
			l.open[ip]++
		}
		l.mu.Unlock()
		if over {
			connectionsRefused.Inc()
			_ = c.Close()
			continue
		}
		return &trackedConn{Conn: c, release: func() { l.release(ip) }}, nil
	}
}

func (l *perIPListener) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[ip]--; l.open[ip] <= 0 {
		delete(l.open, ip)
	}
}

// trackedConn releases its slot once, however often it is closed.
type trackedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *trackedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

func remoteHost(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}
