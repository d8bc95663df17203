// Command nmi is the node agent: it intercepts the instance metadata endpoint
// and serves tokens only to pods admitted for an identity. `nmi cleanup`
// removes the interception at uninstall.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager/signals"

	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/nmi"
	"github.com/aad-pod-identity/aad-pod-identity/nmi/intercept"
)

func main() {
	args := os.Args[1:]
	cleanup := len(args) > 0 && args[0] == "cleanup"
	if cleanup {
		args = args[1:]
	}
	// flag.CommandLine carries controller-runtime's --kubeconfig (pkg/client/config).
	fs := flag.CommandLine
	opts := nmi.Options{NodeName: os.Getenv("NODE_NAME"), IdentityNotFoundRetry: nmi.DefaultIdentityNotFoundRetry, TokenRefreshMargin: 5 * time.Minute}
	var rules intercept.Keeper
	var configFile string
	fs.StringVar(&configFile, "config", "", "The configuration file (the chart's ConfigMap, docs/configuration.md); empty: the defaults.")
	fs.StringVar(&opts.ListenAddress, "listen-address", "127.0.0.1:2579", "ip:port NMI serves metadata on; iptables redirects pods' metadata traffic there.")
	fs.StringVar(&opts.ProbeAddr, "health-probe-bind-address", "127.0.0.1:8085", "Address of /healthz and /readyz; the node's loopback, since NMI shares the node's address with every pod's reach.")
	fs.StringVar(&opts.MetricsAddr, "metrics-bind-address", ":9090", "Address of the Prometheus metrics endpoint; 0 disables it.")
	fs.BoolVar(&opts.SecureMetrics, "secure-metrics", true, "Serve metrics over HTTPS to callers the apiserver authenticates and authorizes (get on nonResourceURL /metrics), rather than in plain HTTP to anyone who reaches the node.")
	fs.StringVar(&rules.Interception.MetadataIP, "metadata-ip", "169.254.169.254", "IP address of the instance metadata endpoint to intercept.")
	fs.IntVar(&rules.Interception.MetadataPort, "metadata-port", 80, "TCP port of the instance metadata endpoint to intercept.")
	fs.StringVar(&opts.IMDSEndpoint, "imds-endpoint", "http://169.254.169.254", "Upstream IMDS NMI itself calls (its own traffic is not intercepted).")
	fs.StringVar(&opts.AADAuthorityHost, "aad-authority-host", "https://login.microsoftonline.com/", "Azure AD authority for service principals whose AzureIdentity has no adEndpoint.")
	fs.StringVar(&opts.CloudConfig, "cloud-config", "/etc/kubernetes/azure.json", "The node's cloud provider config (azure.json, as AKS and aks-engine write it): the kubelet identity it names (userAssignedIdentityID) is served to no pod but exception pods with exceptions.tokens node. A missing file names none.")
	fs.StringVar(&opts.AssignmentsNamespace, "assignments-namespace", os.Getenv("POD_NAMESPACE"), "Namespace of the assigner's AzureAssignedIdentities (default $POD_NAMESPACE): a user-assigned identity is served only when its entry in the record of this node's pool says the assigner put it there with the client ID ARM reports.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	_ = fs.Parse(args) // flag.CommandLine exits on error
	logf.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := logf.Log.WithName("setup")
	if cleanup && configFile != "" {
		// The release's ConfigMap may be gone when an uninstall is retried:
		// the rules are then looked for with the default backend.
		if _, err := os.Stat(configFile); errors.Is(err, os.ErrNotExist) {
			log.Info("no configuration file; cleaning up with the defaults", "config", configFile)
			configFile = ""
		}
	}
	cfg, err := config.Load(configFile, os.Getenv("POD_NAMESPACE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err) // the field and what is wrong with it
		os.Exit(2)
	}
	applyConfig(&opts, &rules, cfg)
	rules.Interception.ListenAddress = opts.ListenAddress
	backend := intercept.Backend(cfg.NMI.IPTablesBackend)

	if cleanup {
		if err := runCleanup(backend); err != nil {
			fmt.Fprintln(os.Stderr, "nmi cleanup:", err)
			os.Exit(1)
		}
		log.Info("interception rules removed", "chain", intercept.Chain)
		return
	}
	rules.Log = logf.Log.WithName("iptables")
	if opts.Rules, err = intercept.NewKeeper(rules, backend); err != nil {
		log.Error(err, "setting up interception")
		os.Exit(1)
	}
	ctx := signals.SetupSignalHandler()
	if err := nmi.Run(ctx, ctrlconfig.GetConfigOrDie(), opts); err != nil {
		log.Error(err, "running NMI")
		os.Exit(1)
	}
}

func runCleanup(backend intercept.Backend) error {
	ipt, _, _, err := intercept.NewIPTables(backend, intercept.ExecRunner)
	if err != nil {
		return err
	}
	return intercept.RemoveRules(ipt)
}

// applyConfig sets what the configuration decides.
func applyConfig(opts *nmi.Options, rules *intercept.Keeper, cfg *config.Configuration) {
	p, n := cfg.Policy, cfg.NMI
	opts.Mode = p.Mode
	opts.Federation, opts.FederationTenantID = p.Federation.Enabled, p.Federation.TenantID
	opts.AllowCrossNamespace = p.AllowCrossNamespace
	opts.ProtectedIdentities, opts.IdentityScopes = p.ProtectedIdentities, p.ScopeEntries()
	opts.Exceptions = nmi.ExceptionPolicy{Namespaces: p.Exceptions.Namespaces, Tokens: p.Exceptions.Tokens, NodeIdentityClientIDs: p.Exceptions.NodeIdentityClientIDs}
	opts.ServeExternalIdentities = p.ServeExternalIdentities
	rules.SyncPeriod, rules.CNICacheDir, rules.FlushConntrack = n.SyncPeriod.Duration, n.CNICacheDir, n.FlushConntrack
	opts.RemoveStartupTaint, opts.CRISocket = n.RemoveStartupTaint, n.CRISocket
	opts.AllowedMetadataPaths = n.AllowedMetadataPaths
	opts.EnableServicePrincipals, opts.AllowCrossNamespaceSecrets = n.EnableServicePrincipals, n.AllowCrossNamespaceSecrets
	opts.UnknownCallerWait = n.UnknownCallerWait.Duration
	opts.UncachedTokensPerSecond, opts.UncachedTokenBurst = *n.UncachedTokenRate, int(n.UncachedTokenBurst)
	opts.MaxConnsPerIP, opts.MaxWaitingRequests = int(*n.MaxConnectionsPerIP), int(*n.MaxWaitingRequests)
	opts.TokenCacheSize, opts.UpstreamIdleConns = int(n.TokenCacheSize), int(n.UpstreamIdleConnections)
}
