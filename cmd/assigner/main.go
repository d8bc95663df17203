// Command assigner puts pods' user-assigned identities on their node pools
// through Azure Resource Manager and then lifts their scheduling gate.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/aad-pod-identity/aad-pod-identity/assigner"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
)

func main() {
	podNamespace := os.Getenv("POD_NAMESPACE")
	if podNamespace == "" {
		podNamespace = "default"
	}
	var (
		mo                                      assigner.ManagerOptions
		opts                                    assigner.Options
		configFile                              string
		azureConfig, armEndpoint, authorityHost string
	)
	flag.StringVar(&configFile, "config", "", "The configuration file (the chart's ConfigMap, docs/configuration.md); empty: the defaults.")
	flag.StringVar(&azureConfig, "azure-config-file", "/etc/kubernetes/azure.json", "Cloud provider config (cloud, tenantId, subscriptionId, aadClientId, aadClientSecret, useManagedIdentityExtension, userAssignedIdentityID); AZURE_* environment variables fill what it lacks.")
	flag.StringVar(&armEndpoint, "arm-endpoint", "", "ARM endpoint; default: the cloud's.")
	flag.StringVar(&authorityHost, "aad-authority-host", "", "Azure AD authority host; default: the cloud's. A custom one disables instance discovery.")
	flag.StringVar(&mo.MetricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus metrics endpoint; 0 disables it.")
	flag.BoolVar(&mo.SecureMetrics, "secure-metrics", true, "Serve metrics over HTTPS to callers the apiserver authenticates and authorizes (get on nonResourceURL /metrics), rather than in plain HTTP to every pod that reaches this one.")
	flag.StringVar(&mo.ProbeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
	flag.StringVar(&mo.PprofAddr, "pprof-bind-address", "", "Address of Go's /debug/pprof endpoints, for profiling; empty disables them.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")

	fail := func(err error, msg string) {
		log.Error(err, msg)
		os.Exit(1)
	}
	cfg, err := config.Load(configFile, podNamespace)
	if err != nil {
		fmt.Fprintln(os.Stderr, err) // the field and what is wrong with it
		os.Exit(2)
	}
	a := cfg.Assigner
	opts.GCGracePeriod, opts.DriftCheckPeriod, opts.BatchWindow = a.GCGracePeriod.Duration, a.DriftCheckPeriod.Duration, a.BatchWindow.Duration
	opts.MaxConcurrentPools = int(a.MaxConcurrentPools)
	opts.AllowCrossNamespace = cfg.Policy.AllowCrossNamespace
	opts.NMINodeSelection = cfg.Policy.NMINodeSelection.JSON()
	mo.LeaderElect, mo.LeaderElectionNamespace = *a.LeaderElect, podNamespace
	mo.QPS, mo.Burst = float32(a.KubeAPIQPS), int(a.KubeAPIBurst)
	az, err := assigner.LoadAzureConfig(azureConfig)
	if err != nil {
		fail(err, "reading Azure configuration")
	}
	cloudCfg, err := az.CloudConfiguration(armEndpoint, authorityHost)
	if err != nil {
		fail(err, "choosing the cloud")
	}
	cred, err := az.Credential(cloudCfg, nil, authorityHost != "")
	if err != nil {
		fail(err, "creating Azure credential")
	}
	opts.Namespace = podNamespace
	opts.ARM = assigner.NewARM(cred, assigner.ARMOptions(cloudCfg, nil), a.ARMPollInterval.Duration)
	// The cluster's own identity is never ours to remove.
	opts.Immutable = append(slices.Clone(a.ImmutableIdentities), az.UserAssignedIdentityID)

	restCfg := ctrl.GetConfigOrDie()
	if opts.LegacyEvidenceBefore, err = assigner.InstalledAt(context.Background(), restCfg, cfg.Webhook.ConfigurationName); err != nil {
		fail(err, "reading when this installation began")
	}
	mgr, err := assigner.NewManager(restCfg, mo, opts)
	if err != nil {
		fail(err, "setting up assigner")
	}
	log.Info("starting assigner", "namespace", podNamespace, "armEndpoint", cloudCfg.Services[cloud.ResourceManager].Endpoint,
		"gcGracePeriod", opts.GCGracePeriod, "driftCheckPeriod", opts.DriftCheckPeriod, "leaderElect", mo.LeaderElect)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		fail(err, "running manager")
	}
}
