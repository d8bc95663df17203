// Command coredns is CoreDNS with only the plugins the sandbox's cluster DNS
// uses (docs/sandbox.md): upstream's main links every plugin through
// core/plugin, and with them every cloud SDK.
package main

import (
	"slices"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// init keeps CoreDNS's directive order (plugin.cfg), which decides the order
// of each server block's plugin chain, less the plugins not linked here, so
// that `-plugins` and a Corefile naming one of those tell the truth.
func init() {
	dnsserver.Directives = slices.DeleteFunc(slices.Clone(dnsserver.Directives), func(d string) bool {
		_, err := caddy.DirectiveAction("dns", d)
		return err != nil
	})
}

func main() { coremain.Run() }
