// Command nmi is the node agent: it intercepts the instance metadata endpoint
// and serves tokens only to pods admitted for an identity. `nmi cleanup`
// removes the interception at uninstall.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/aad-pod-identity/aad-pod-identity/nmi"
	"github.com/aad-pod-identity/aad-pod-identity/nmi/intercept"
)

func main() {
	args := os.Args[1:]
	cleanup := len(args) > 0 && args[0] == "cleanup"
	if cleanup {
		args = args[1:]
	}
	// flag.CommandLine carries controller-runtime's --kubeconfig.
	fs := flag.CommandLine
	opts := nmi.Options{NodeName: os.Getenv("NODE_NAME"), IdentityNotFoundRetry: nmi.DefaultIdentityNotFoundRetry, TokenRefreshMargin: 5 * time.Minute}
	var allowed string
	var rules intercept.Keeper
	backend := intercept.BackendAuto
	fs.StringVar(&opts.ListenAddress, "listen-address", "127.0.0.1:2579", "ip:port NMI serves metadata on; iptables redirects pods' metadata traffic there.")
	fs.StringVar(&opts.ProbeAddr, "health-probe-bind-address", "127.0.0.1:8085", "Address of /healthz and /readyz; the node's loopback, since NMI shares the node's address with every pod's reach.")
	fs.StringVar(&opts.MetricsAddr, "metrics-bind-address", ":9090", "Address of the Prometheus metrics endpoint; 0 disables it.")
	fs.BoolVar(&opts.SecureMetrics, "secure-metrics", true, "Serve metrics over HTTPS to callers the apiserver authenticates and authorizes (get on nonResourceURL /metrics), rather than in plain HTTP to anyone who reaches the node.")
	fs.StringVar(&rules.Interception.MetadataIP, "metadata-ip", "169.254.169.254", "IP address of the instance metadata endpoint to intercept.")
	fs.IntVar(&rules.Interception.MetadataPort, "metadata-port", 80, "TCP port of the instance metadata endpoint to intercept.")
	fs.StringVar(&opts.IMDSEndpoint, "imds-endpoint", "http://169.254.169.254", "Upstream IMDS NMI itself calls (its own traffic is not intercepted).")
	fs.StringVar(&opts.AADAuthorityHost, "aad-authority-host", "https://login.microsoftonline.com/", "Azure AD authority for service principals whose AzureIdentity has no adEndpoint.")
	fs.DurationVar(&rules.SyncPeriod, "sync-period", 60*time.Second, "How often the iptables rules are checked and repaired.")
	fs.BoolVar(&opts.RemoveStartupTaint, "remove-startup-taint", false, "Remove the taint "+"aadpodidentity.k8s.io/nmi-not-ready"+" from this node once interception is in place.")
	fs.StringVar(&allowed, "allowed-metadata-paths", "/metadata/instance,/metadata/versions", "Comma-separated metadata paths (and their sub-paths) proxied for every pod; others get 403.")
	fs.BoolVar(&opts.EnableServicePrincipals, "enable-service-principals", false, "Serve type 1 and 2 AzureIdentities (NMI then reads their Secrets).")
	fs.BoolVar(&opts.AllowCrossNamespace, "allow-cross-namespace", false, "Count AzureIdentityBindings in every namespace when checking that a pod is still bound to an identity; must match the webhook's flag.")
	fs.BoolVar(&opts.AllowCrossNamespaceSecrets, "allow-cross-namespace-secrets", false, "Let an AzureIdentity use a Secret outside its own namespace.")
	fs.DurationVar(&opts.UnknownCallerWait, "unknown-caller-wait", 5*time.Second, "How long a request from an address no pod on this node has yet waits for the pod's IP to be reported (containers may call IMDS before the kubelet reports their IP); then 403.")
	fs.Float64Var(&opts.UncachedTokensPerSecond, "uncached-token-rate", 10, "Token requests per second one pod may make that miss NMI's cache and reach IMDS or Azure AD; more get 429 with Retry-After. 0 disables the limit.")
	fs.IntVar(&opts.UncachedTokenBurst, "uncached-token-burst", 50, "Burst of --uncached-token-rate (a pod starting with many identities and resources).")
	fs.IntVar(&opts.MaxConnsPerIP, "max-connections-per-ip", 64, "Open connections NMI accepts from one pod address; more are closed at once. 0 disables the cap.")
	fs.IntVar(&opts.TokenCacheSize, "token-cache-size", nmi.DefaultTokenCacheSize, "Tokens NMI caches at most; beyond it the least recently used is evicted (nmi_token_cache_evictions_total).")
	fs.IntVar(&opts.UpstreamIdleConns, "upstream-idle-connections", 64, "Idle connections kept to IMDS and to each Azure AD authority: at least the token fetches NMI runs at once, or a busy NMI opens a connection per call.")
	fs.IntVar(&opts.MaxWaitingRequests, "max-waiting-requests", 1000, "Requests that may wait at once for NMI's cache to catch up (an unknown caller's IP, a newer pod's, the assigner's record); more get 503 with Retry-After at once. 0 disables the cap.")
	var exceptionNamespaces, exceptionTokens, nodeIdentities, protected, scopes string
	fs.StringVar(&scopes, "identity-scopes", "", "Comma-separated namespace=scope entries: AzureIdentities of a namespace may name only user-assigned identities under its scopes (/subscriptions/<id> or /subscriptions/<id>/resourceGroups/<group>); namespace * is every namespace without entries. Empty: no restriction. NMI serves no other; must match the webhook's flag.")
	fs.StringVar(&opts.CloudConfig, "cloud-config", "/etc/kubernetes/azure.json", "The node's cloud provider config (azure.json, as AKS and aks-engine write it): the kubelet identity it names (userAssignedIdentityID) is served to no pod but exception pods with --exception-tokens=node. A missing file names none.")
	fs.StringVar(&protected, "protected-identities", "", "Comma-separated client or resource IDs of the cluster's own identities (kubelet, assigner, immutable ones), served to no pod whatever an AzureIdentity names; --node-identity-client-ids are protected too.")
	fs.StringVar(&exceptionNamespaces, "exception-namespaces", "kube-system", "Comma-separated namespaces whose AzurePodIdentityExceptions count; * is every namespace.")
	fs.StringVar(&exceptionTokens, "exception-tokens", string(nmi.ExceptionTokensNode), "Tokens an AzurePodIdentityException grants: none; node (requests naming no identity, or a --node-identity-client-ids one); any (IMDS unchanged, every identity on the pool).")
	fs.StringVar(&nodeIdentities, "node-identity-client-ids", "", "Comma-separated client IDs of the node's own identities (the kubelet's), which exception pods may name with --exception-tokens=node.")
	fs.StringVar(&opts.AssignmentsNamespace, "assignments-namespace", os.Getenv("POD_NAMESPACE"), "Namespace of the assigner's AzureAssignedIdentities (default $POD_NAMESPACE): a user-assigned identity is served only when its entry in the record of this node's pool says the assigner put it there with the client ID ARM reports.")
	fs.StringVar(&opts.CRISocket, "cri-socket", "", "Container runtime (CRI) socket, e.g. /run/containerd/containerd.sock: each caller's IP is confirmed against the runtime's ready pod sandboxes, which closes the window where NMI's cache still gives a reused IP to its previous pod. Empty: the cache alone decides.")
	fs.StringVar(&opts.Mode, "mode", nmi.ModeStandard, "Who assigns user-assigned identities to the node pools: standard (the assigner, whose AzureAssignedIdentities NMI checks) or managed (the cluster's admins, as with the AKS add-on; NMI checks the client and resource ID pairing on IMDS's token, and tells a pod whose identity is not on its pool what to run).")
	fs.StringVar(&rules.CNICacheDir, "cni-cache-dir", "", "The container runtime's CNI results cache, e.g. /var/lib/cni/results: each pod address is tied to the host side of its interface, and metadata traffic carrying a pod's address from any other interface is dropped (chain "+intercept.SpoofChain+" in mangle). Bridges need br_netfilter. Empty: off.")
	fs.BoolVar(&opts.ServeExternalIdentities, "serve-external-identities", false, "Also serve user-assigned identities that were on the node pool before the assigner needed them (records marked external): nothing ties them to the AzureIdentity that names them.")
	fs.StringVar((*string)(&backend), "iptables-backend", string(intercept.BackendAuto), "iptables backend to write the rules into: auto (the node's: where kubelet's and kube-proxy's hint chains are, else the one with more rules, else iptables on PATH), legacy, nft, or path (iptables on PATH).")
	fs.BoolVar(&rules.FlushConntrack, "flush-conntrack", false, "After installing the rules, drop tracked connections to the metadata IP.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	_ = fs.Parse(args) // flag.CommandLine exits on error
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")
	rules.Interception.ListenAddress = opts.ListenAddress
	opts.AllowedMetadataPaths = splitList(allowed)
	opts.Exceptions.Namespaces = splitList(exceptionNamespaces)
	opts.Exceptions.NodeIdentityClientIDs = splitList(nodeIdentities)
	opts.ProtectedIdentities = splitList(protected)
	opts.IdentityScopes = splitList(scopes)
	var err error
	if opts.Exceptions.Tokens, err = nmi.ParseExceptionTokens(exceptionTokens); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	if cleanup {
		if err := runCleanup(backend); err != nil {
			fmt.Fprintln(os.Stderr, "nmi cleanup:", err)
			os.Exit(1)
		}
		log.Info("interception rules removed", "chain", intercept.Chain)
		return
	}
	rules.Log = ctrl.Log.WithName("iptables")
	if opts.Rules, err = intercept.NewKeeper(rules, backend); err != nil {
		log.Error(err, "setting up interception")
		os.Exit(1)
	}
	ctx := ctrl.SetupSignalHandler()
	if err := nmi.Run(ctx, ctrl.GetConfigOrDie(), opts); err != nil {
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

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
