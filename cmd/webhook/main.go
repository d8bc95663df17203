// Command webhook serves the aad-pod-identity admission webhook. `webhook
// crds` replaces the project's CRDs with the chart's (its install and
// upgrade hook).
package main

import (
	"context"
	"flag"
	"os"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/aad-pod-identity/aad-pod-identity/internal/crdsync"
	"github.com/aad-pod-identity/aad-pod-identity/webhook"
	"github.com/aad-pod-identity/aad-pod-identity/webhook/certrotation"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "crds" {
		os.Exit(replaceCRDs(os.Args[2:]))
	}
	podNamespace := os.Getenv("POD_NAMESPACE")
	if podNamespace == "" {
		podNamespace = "default"
	}
	var (
		opts                webhook.Options
		trusted             string
		exceptionNamespaces string
		protected           string
		scopes              string
		rotation            certrotation.Config
		rotate              bool
	)
	flag.StringVar(&opts.CertDir, "cert-dir", "/certs", "Directory holding the serving certificate; it is reloaded when it changes.")
	flag.StringVar(&opts.CertName, "cert-name", "tls.crt", "Serving certificate file name in --cert-dir.")
	flag.StringVar(&opts.KeyName, "key-name", "tls.key", "Serving key file name in --cert-dir.")
	flag.IntVar(&opts.Port, "port", 9443, "Port the webhook serves HTTPS on.")
	flag.StringVar(&opts.MetricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus metrics endpoint; 0 disables it.")
	flag.BoolVar(&opts.SecureMetrics, "secure-metrics", true, "Serve metrics over HTTPS to callers the apiserver authenticates and authorizes (get on nonResourceURL /metrics), rather than in plain HTTP to every pod that reaches this one.")
	flag.StringVar(&opts.ProbeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
	flag.StringVar(&opts.Mode, "mode", webhook.ModeStandard, "Who assigns user-assigned identities to the node pools: standard (the assigner; pods are gated until their identities are in place) or managed (the cluster's admins; pods are not gated, and gates set in standard mode are lifted).")
	flag.BoolVar(&opts.AllowCrossNamespace, "allow-cross-namespace", false, "Let pods match AzureIdentityBindings in every namespace (the behaviour of releases before this design).")
	flag.StringVar(&trusted, "trusted-service-accounts",
		podNamespace+"/aad-pod-identity-webhook,"+podNamespace+"/aad-pod-identity-assigner",
		"Comma-separated namespace/name of the service accounts that may change a pod's aadpodidbinding label, aadpodidentity.k8s.io/* annotations and scheduling gate after creation.")
	flag.StringVar(&exceptionNamespaces, "exception-namespaces", "kube-system", "NMI's --exception-namespaces: an AzurePodIdentityException elsewhere is admitted with a warning that it has no effect.")
	flag.StringVar(&opts.ExceptionTokens, "exception-tokens", "node", "NMI's --exception-tokens, told to whoever creates an AzurePodIdentityException.")
	flag.StringVar(&protected, "protected-identities", "", "Comma-separated client or resource IDs of the cluster's own identities (kubelet, assigner, immutable ones): AzureIdentities naming them are refused.")
	flag.StringVar(&scopes, "identity-scopes", "", "Comma-separated namespace=scope entries: AzureIdentities of a namespace may name only user-assigned identities under its scopes (/subscriptions/<id> or /subscriptions/<id>/resourceGroups/<group>); namespace * is every namespace without entries. Empty: no restriction. Others are refused.")
	flag.BoolVar(&rotate, "cert-rotation", false, "Create, renew and inject the serving certificate and its CA without cert-manager; --cert-dir must be where the --cert-secret-name Secret is mounted.")
	flag.StringVar(&rotation.Secret.Name, "cert-secret-name", "aad-pod-identity-webhook-cert", "With --cert-rotation: the Secret in $POD_NAMESPACE that holds the CA and serving certificate.")
	flag.StringVar(&rotation.ServiceName, "cert-service-name", "aad-pod-identity-webhook", "With --cert-rotation: the webhook Service in $POD_NAMESPACE the certificate is issued for.")
	flag.StringVar(&opts.WebhookConfigurationName, "webhook-configuration-name", "aad-pod-identity", "The release's Mutating- and ValidatingWebhookConfiguration: the mutating one's creation dates --adopt-preexisting-pods; with --cert-rotation their caBundle is injected.")
	flag.BoolVar(&opts.AdoptPreexistingPods, "adopt-preexisting-pods", true, "Once per start, resolve and annotate the live labelled pods created before --webhook-configuration-name (aad-pod-identity 1.x's workloads), with an event, so NMI serves them without a restart. Younger pods without annotations are never adopted.")
	flag.DurationVar(&opts.ShutdownDrain, "shutdown-drain", 5*time.Second, "On SIGTERM, keep serving this long, unready and closing each connection after its answer, before stopping: the API server then stops reusing connections to this pod instead of losing a request on one the shutdown closes.")
	flag.StringVar(&opts.NMINodeSelection, "nmi-node-selection", "", "NMI's DaemonSet node selection as JSON (nodeSelector, affinity, tolerations): identities go only onto the pools of nodes NMI runs on, and a labelled pod that can only run elsewhere is refused.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")
	opts.TrustedServiceAccounts = strings.Split(trusted, ",")
	opts.ExceptionNamespaces = strings.Split(exceptionNamespaces, ",")
	opts.ProtectedIdentities = strings.Split(protected, ",")
	opts.IdentityScopes = strings.Split(scopes, ",")

	ctx := ctrl.SetupSignalHandler()
	mgr, err := webhook.NewManager(ctx, ctrl.GetConfigOrDie(), opts)
	if err != nil {
		log.Error(err, "setting up webhook")
		os.Exit(1)
	}
	if rotate {
		rotation.Secret.Namespace = podNamespace
		rotation.WebhookConfigurationName = opts.WebhookConfigurationName
		rotation.CertDir, rotation.CertName, rotation.KeyName = opts.CertDir, opts.CertName, opts.KeyName
		if err := certrotation.Add(mgr, rotation); err != nil {
			log.Error(err, "setting up certificate rotation")
			os.Exit(1)
		}
	}
	log.Info("starting webhook", "certRotation", rotate, "port", opts.Port, "certDir", opts.CertDir, "allowCrossNamespace", opts.AllowCrossNamespace, "trusted", opts.TrustedServiceAccounts)
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "running manager")
		os.Exit(1)
	}
}

// replaceCRDs runs `webhook crds --dir DIR`.
func replaceCRDs(args []string) int {
	fs := flag.NewFlagSet("webhook crds", flag.ExitOnError)
	dir := fs.String("dir", "/crds", "Directory of the CustomResourceDefinition manifests (*.yaml) to create or replace.")
	timeout := fs.Duration("timeout", 2*time.Minute, "Give up after this long.")
	_ = fs.Parse(args)
	ctrl.SetLogger(zap.New())
	log := ctrl.Log.WithName("crds")
	crds, err := crdsync.Read(*dir)
	if err != nil {
		log.Error(err, "reading CRDs")
		return 1
	}
	c, err := client.New(ctrl.GetConfigOrDie(), client.Options{Scheme: crdsync.Scheme()})
	if err != nil {
		log.Error(err, "creating client")
		return 1
	}
	ctx, cancel := context.WithTimeout(ctrl.SetupSignalHandler(), *timeout)
	defer cancel()
	if err := crdsync.Replace(ctx, c, crds, log); err != nil {
		log.Error(err, "replacing CRDs")
		return 1
	}
	return 0
}
