package sandbox

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/net/dns/dnsmessage"
)

// serveDNS answers the cluster DNS address (APIServerIP:53, UDP) inside the
// control-plane namespace with the fake cloud's names (hostAliases), so that
// pods on real nodes reach https://management.azure.com/ unchanged as their
// manifests say; every other name is NXDOMAIN: the sandbox reaches no
// outside network. It stands in for the cluster's DNS (CoreDNS on AKS) for
// those names only.
func (s *Sandbox) serveDNS() error {
	var conn net.PacketConn
	err := s.cp.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.ListenPacket("udp4", net.JoinHostPort(APIServerIP.String(), "53"))
		return err
	})
	if err != nil {
		return fmt.Errorf("DNS listener: %w", err)
	}
	s.addCloser(func() { _ = conn.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if reply, err := s.answerDNS(buf[:n]); err == nil {
				_, _ = conn.WriteTo(reply, from)
			}
		}
	}()
	return nil
}

// answerDNS answers one query: A records of the known names, an empty
// answer for their other types, NXDOMAIN for other names.
func (s *Sandbox) answerDNS(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	if h.Response {
		return nil, errors.New("not a query")
	}
	name := strings.TrimSuffix(strings.ToLower(q.Name.String()), ".")
	s.mu.Lock()
	addr, known := s.hostAliases[name]
	s.mu.Unlock()
	rcode := dnsmessage.RCodeSuccess
	if !known {
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RCode: rcode})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if ip := net.ParseIP(addr).To4(); known && q.Type == dnsmessage.TypeA && ip != nil {
		err := b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 30}, dnsmessage.AResource{A: [4]byte(ip)})
		if err != nil {
			return nil, err
		}
	}
	return b.Finish()
}
