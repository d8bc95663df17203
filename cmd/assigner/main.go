// Command assigner puts pods' user-assigned identities on their node pools
// through Azure Resource Manager and then lifts their scheduling gate.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/aad-pod-identity/aad-pod-identity/assigner"
)

func main() {
	podNamespace := os.Getenv("POD_NAMESPACE")
	if podNamespace == "" {
		podNamespace = "default"
	}
	var (
		mo                                      assigner.ManagerOptions
		opts                                    assigner.Options
		azureConfig, armEndpoint, authorityHost string
		immutable, webhookConfiguration         string
		pollInterval                            time.Duration
		qps                                     float64
	)
	flag.StringVar(&azureConfig, "azure-config-file", "/etc/kubernetes/azure.json", "Cloud provider config (cloud, tenantId, subscriptionId, aadClientId, aadClientSecret, useManagedIdentityExtension, userAssignedIdentityID); AZURE_* environment variables fill what it lacks.")
	flag.StringVar(&armEndpoint, "arm-endpoint", "", "ARM endpoint; default: the cloud's.")
	flag.StringVar(&authorityHost, "aad-authority-host", "", "Azure AD authority host; default: the cloud's. A custom one disables instance discovery.")
	flag.StringVar(&immutable, "immutable-identities", "", "Comma-separated client IDs or resource IDs of identities never removed from a pool.")
	flag.DurationVar(&opts.GCGracePeriod, "gc-grace-period", 5*time.Minute, "How long an identity no live pod needs stays on a pool before it is removed.")
	flag.DurationVar(&opts.DriftCheckPeriod, "drift-check-period", 3*time.Minute, "How often pools are re-read, vanished identities re-added and refused ones retried.")
	flag.DurationVar(&opts.BatchWindow, "batch-window", 500*time.Millisecond, "Longest time new identities for a pool wait for more pods before the write, so that a burst shares one PATCH; the write starts earlier once every pod seen has been handled and no new identity has appeared for a fifth of it.")
	flag.DurationVar(&pollInterval, "arm-poll-interval", time.Second, "Polling interval of ARM long-running operations when ARM sends no Retry-After (minimum 1s).")
	flag.IntVar(&opts.MaxConcurrentPools, "max-concurrent-pools", 8, "How many node pools are read and written at once; each waits on ARM's long-running operations.")
	flag.BoolVar(&opts.AllowCrossNamespace, "allow-cross-namespace", false, "Let pods match AzureIdentityBindings in every namespace, as the webhook does with the same flag.")
	flag.BoolVar(&mo.LeaderElect, "leader-elect", true, "Elect a leader through a Lease, so that only one replica writes to ARM.")
	flag.StringVar(&mo.LeaderElectionNamespace, "leader-election-namespace", podNamespace, "Namespace of the leader election Lease.")
	flag.Float64Var(&qps, "kube-api-qps", 500, "Requests per second to the Kubernetes API server.")
	flag.IntVar(&mo.Burst, "kube-api-burst", 1000, "Burst of requests to the Kubernetes API server.")
	flag.StringVar(&mo.MetricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus metrics endpoint; 0 disables it.")
	flag.BoolVar(&mo.SecureMetrics, "secure-metrics", true, "Serve metrics over HTTPS to callers the apiserver authenticates and authorizes (get on nonResourceURL /metrics), rather than in plain HTTP to every pod that reaches this one.")
	flag.StringVar(&mo.ProbeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
	flag.StringVar(&mo.PprofAddr, "pprof-bind-address", "", "Address of Go's /debug/pprof endpoints, for profiling; empty disables them.")
	flag.StringVar(&opts.NMINodeSelection, "nmi-node-selection", "", "NMI's DaemonSet node selection as JSON (nodeSelector, affinity, tolerations): identities go only onto the pools of nodes NMI runs on.")
	flag.StringVar(&webhookConfiguration, "webhook-configuration-name", "aad-pod-identity", "The release's MutatingWebhookConfiguration: aad-pod-identity 1.x's records count as evidence only when created before it.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	mo.QPS = float32(qps)
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")

	fail := func(err error, msg string) {
		log.Error(err, msg)
		os.Exit(1)
	}
	if pollInterval < time.Second {
		fail(fmt.Errorf("--arm-poll-interval %s is below azcore's minimum of 1s", pollInterval), "checking flags")
	}
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
	opts.ARM = assigner.NewARM(cred, assigner.ARMOptions(cloudCfg, nil), pollInterval)
	opts.Immutable = strings.Split(immutable, ",")
	// The cluster's own identity is never ours to remove.
	opts.Immutable = append(opts.Immutable, az.UserAssignedIdentityID)

	cfg := ctrl.GetConfigOrDie()
	if opts.LegacyEvidenceBefore, err = assigner.InstalledAt(context.Background(), cfg, webhookConfiguration); err != nil {
		fail(err, "reading when this installation began")
	}
	mgr, err := assigner.NewManager(cfg, mo, opts)
	if err != nil {
		fail(err, "setting up assigner")
	}
	log.Info("starting assigner", "namespace", podNamespace, "armEndpoint", cloudCfg.Services[cloud.ResourceManager].Endpoint,
		"gcGracePeriod", opts.GCGracePeriod, "driftCheckPeriod", opts.DriftCheckPeriod, "leaderElect", mo.LeaderElect)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		fail(err, "running manager")
	}
}
