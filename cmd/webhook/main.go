// Command webhook serves the aad-pod-identity admission webhook. `webhook
// crds` replaces the project's CRDs with the chart's (its install and
// upgrade hook).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
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
		opts       webhook.Options
		configFile string
	)
	flag.StringVar(&configFile, "config", "", "The configuration file (the chart's ConfigMap, docs/configuration.md); empty: the defaults.")
	flag.StringVar(&opts.CertDir, "cert-dir", "/certs", "Directory holding the serving certificate; it is reloaded when it changes.")
	flag.StringVar(&opts.CertName, "cert-name", "tls.crt", "Serving certificate file name in --cert-dir.")
	flag.StringVar(&opts.KeyName, "key-name", "tls.key", "Serving key file name in --cert-dir.")
	flag.IntVar(&opts.Port, "port", 9443, "Port the webhook serves HTTPS on.")
	flag.StringVar(&opts.MetricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus metrics endpoint; 0 disables it.")
	flag.BoolVar(&opts.SecureMetrics, "secure-metrics", true, "Serve metrics over HTTPS to callers the apiserver authenticates and authorizes (get on nonResourceURL /metrics), rather than in plain HTTP to every pod that reaches this one.")
	flag.StringVar(&opts.ProbeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")
	cfg, err := config.Load(configFile, podNamespace)
	if err != nil {
		fmt.Fprintln(os.Stderr, err) // the field and what is wrong with it
		os.Exit(2)
	}
	p, w := cfg.Policy, cfg.Webhook
	opts.Mode, opts.Federation = p.Mode, p.Federation.Enabled
	opts.AllowCrossNamespace = p.AllowCrossNamespace
	opts.TrustedServiceAccounts = w.TrustedServiceAccounts
	opts.ExceptionNamespaces, opts.ExceptionTokens = p.Exceptions.Namespaces, p.Exceptions.Tokens
	opts.ProtectedIdentities, opts.IdentityScopes = p.ProtectedIdentities, p.ScopeEntries()
	opts.NMINodeSelection = p.NMINodeSelection.JSON()
	opts.WebhookConfigurationName, opts.AdoptPreexistingPods, opts.ShutdownDrain = w.ConfigurationName, *w.AdoptPreexistingPods, w.ShutdownDrain.Duration
	rotate := w.CertRotation.Enabled
	var rotation certrotation.Config
	rotation.Secret.Name, rotation.ServiceName = w.CertRotation.SecretName, w.CertRotation.ServiceName

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
