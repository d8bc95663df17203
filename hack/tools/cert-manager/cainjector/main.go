// Command cainjector is cert-manager's CA injector built from its Go module.
// The module proxy does not serve cert-manager's cmd/cainjector module, so
// this main wires the public package that binary uses,
// pkg/controller/cainjector, into a controller-runtime manager with leader
// election: it writes the CA of a Certificate (cert-manager.io/inject-ca-from)
// or a Secret (inject-ca-from-secret) into webhook configurations, CRDs and
// APIServices.
package main

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/controller/cainjector"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	"github.com/aad-pod-identity/aad-pod-identity/hack/tools/cert-manager/internal/command"
)

type options struct {
	command.Cluster
	metricsAddress, healthzAddress       string
	namespace                            string
	enableCertificatesDataSource         bool
	injectWebhooks, injectCRDs, injectAS bool
}

func main() {
	var o options
	fs := pflag.NewFlagSet("cert-manager-cainjector", pflag.ExitOnError)
	o.Cluster.AddFlags(fs)
	fs.StringVar(&o.namespace, "namespace", "", "Only inject into objects of this namespace (all when empty).")
	fs.StringVar(&o.metricsAddress, "metrics-listen-address", "0.0.0.0:9402", "Prometheus metrics endpoint.")
	fs.StringVar(&o.healthzAddress, "healthz-listen-address", "0.0.0.0:9403", "Liveness and readiness endpoints (/livez, /readyz).")
	fs.BoolVar(&o.enableCertificatesDataSource, "enable-certificates-data-source", true, "Inject from Certificates (cert-manager.io/inject-ca-from).")
	fs.BoolVar(&o.injectWebhooks, "enable-webhook-injectable", true, "Inject into Mutating and ValidatingWebhookConfigurations.")
	fs.BoolVar(&o.injectCRDs, "enable-customresourcedefinition-injectable", true, "Inject into CustomResourceDefinitions' conversion webhooks.")
	fs.BoolVar(&o.injectAS, "enable-apiservices-injectable", true, "Inject into APIServices.")
	command.Main("cainjector", fs, func(ctx context.Context) error { return run(ctx, o) })
}

func run(ctx context.Context, o options) error {
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(cmapi.AddToScheme(scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(scheme))
	utilruntime.Must(apiregistrationv1.AddToScheme(scheme))
	ctrl.SetLogger(logf.Log)

	// In-cluster configuration when --kubeconfig is empty.
	cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "cert-manager-cainjector"
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		LeaderElection:          true,
		LeaderElectionID:        "cert-manager-cainjector-leader-election",
		LeaderElectionNamespace: o.LeaderNamespace,
		// A successor (a rollout, a scale from 0) need not wait out the lease.
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &o.LeaseDuration,
		RenewDeadline:                 &o.RenewDeadline,
		RetryPeriod:                   &o.RetryPeriod,
		Metrics:                       metricsserver.Options{BindAddress: o.metricsAddress},
		HealthProbeBindAddress:        o.healthzAddress,
		LivenessEndpointName:          "/livez",
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	err = cainjector.RegisterAllInjectors(ctx, mgr, cainjector.SetupOptions{
		Namespace:                    o.namespace,
		EnableCertificatesDataSource: o.enableCertificatesDataSource,
		EnabledReconcilersFor: map[string]bool{
			// cainjector's resource names (its setups keep them unexported).
			"mutatingwebhookconfiguration":   o.injectWebhooks,
			"validatingwebhookconfiguration": o.injectWebhooks,
			"apiservice":                     o.injectAS,
			"customresourcedefinition":       o.injectCRDs,
		},
	})
	if err != nil {
		return fmt.Errorf("injectors: %w", err)
	}
	return mgr.Start(ctx)
}
