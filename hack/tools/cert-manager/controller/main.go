// Command controller is cert-manager's controller built from its Go module.
// The module proxy does not serve cert-manager's cmd/controller module, so
// this main wires the same public packages that binary does: the controller
// context factory and the registered controllers, under leader election,
// with cert-manager's liveness and metrics servers. Only the controllers
// an in-cluster CA needs are wired (docs/sandbox.md lists them); ACME,
// Vault, Venafi and the ingress/gateway shims are not.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	crca "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	crselfsigned "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	certmetrics "github.com/cert-manager/cert-manager/pkg/controller/certificates/metrics"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	"github.com/cert-manager/cert-manager/pkg/healthz"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca" // registers the CA issuer
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	"github.com/aad-pod-identity/aad-pod-identity/hack/tools/cert-manager/internal/command"
)

// wired are the controllers this build runs: Issuers and ClusterIssuers of
// type SelfSigned and CA, and the whole Certificate life cycle.
var wired = []string{
	issuers.ControllerName, clusterissuers.ControllerName,
	approver.ControllerName, crselfsigned.CRControllerName, crca.CRControllerName,
	trigger.ControllerName, keymanager.ControllerName, requestmanager.ControllerName,
	issuing.ControllerName, readiness.ControllerName, revisionmanager.ControllerName, certmetrics.ControllerName,
}

// workers per controller, cert-manager's default.
const workers = 5

type options struct {
	controllers []string
	command.Cluster
	clusterResourceNamespace       string
	healthzAddress, metricsAddress string
}

func main() {
	var o options
	fs := pflag.NewFlagSet("cert-manager-controller", pflag.ExitOnError)
	fs.StringSliceVar(&o.controllers, "controllers", []string{"*"}, "Controllers to run: * (all wired), or names; wired: "+fmt.Sprint(wired))
	o.Cluster.AddFlags(fs)
	fs.StringVar(&o.clusterResourceNamespace, "cluster-resource-namespace", "kube-system", "Namespace of the Secrets ClusterIssuers read.")
	fs.StringVar(&o.healthzAddress, "healthz-listen-address", "0.0.0.0:9403", "Liveness endpoint (/livez).")
	fs.StringVar(&o.metricsAddress, "metrics-listen-address", "0.0.0.0:9402", "Prometheus metrics endpoint.")
	// cert-manager's chart sets these for ACME and the ingress shim, which
	// are not wired: accepted, and ignored.
	for _, name := range []string{"acme-http01-solver-image", "max-concurrent-challenges", "default-issuer-name", "default-issuer-kind", "default-issuer-group"} {
		fs.String(name, "", "Ignored: ACME and the ingress shim are not wired into this build.")
	}
	command.Main("controller", fs, func(ctx context.Context) error { return run(ctx, o) })
}

func run(ctx context.Context, o options) error {
	log := logf.FromContext(ctx)
	enabled, err := enabledControllers(o.controllers)
	if err != nil {
		return err
	}
	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         o.Kubeconfig,
		KubernetesAPIQPS:   20,
		KubernetesAPIBurst: 50,
		IssuerOptions:      controllerpkg.IssuerOptions{ClusterResourceNamespace: o.clusterResourceNamespace},
		CertificateOptions: controllerpkg.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return fmt.Errorf("controller context: %w", err)
	}
	cmctx, err := factory.Build("controller")
	if err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	health := healthz.NewServer(o.LeaseDuration + 20*time.Second)
	if err := serve(ctx, g, o.healthzAddress, func(ctx context.Context, l net.Listener) error { return health.Start(ctx, l) }); err != nil {
		return fmt.Errorf("liveness server: %w", err)
	}
	if err := serve(ctx, g, o.metricsAddress, func(ctx context.Context, l net.Listener) error {
		srv := cmctx.Metrics.NewServer(l)
		go func() { <-ctx.Done(); _ = srv.Close() }()
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}); err != nil {
		return fmt.Errorf("metrics server: %w", err)
	}

	host, _ := os.Hostname()
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.LeaderNamespace, "cert-manager-controller",
		cmctx.Client.CoreV1(), cmctx.Client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: host, EventRecorder: cmctx.Recorder})
	if err != nil {
		return fmt.Errorf("leader election lock: %w", err)
	}
	g.Go(func() error {
		var runErr error
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: o.LeaseDuration, RenewDeadline: o.RenewDeadline, RetryPeriod: o.RetryPeriod,
			ReleaseOnCancel: true, Name: "cert-manager-controller", WatchDog: health.LeaderHealthzAdaptor,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) { runErr = runControllers(ctx, factory, enabled) },
				OnStoppedLeading: func() { log.Info("leader election lost") },
			},
		})
		if runErr == nil && ctx.Err() == nil {
			runErr = errors.New("leader election lost")
		}
		return runErr
	})
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// runControllers constructs the enabled controllers, starts the shared
// informers they registered and runs them until ctx ends.
func runControllers(ctx context.Context, factory *controllerpkg.ContextFactory, enabled []string) error {
	log := logf.FromContext(ctx)
	var ifaces []controllerpkg.Interface
	for _, name := range enabled {
		iface, err := controllerpkg.Known()[name](factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", name, err)
		}
		ifaces = append(ifaces, iface)
	}
	cmctx, err := factory.Build()
	if err != nil {
		return err
	}
	cmctx.KubeSharedInformerFactory.Start(ctx.Done())
	cmctx.SharedInformerFactory.Start(ctx.Done())
	cmctx.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	var g errgroup.Group
	for i, iface := range ifaces {
		g.Go(func() error {
			log.Info("starting controller", "controller", enabled[i])
			if err := iface.Run(workers, ctx); err != nil {
				return fmt.Errorf("controller %s: %w", enabled[i], err)
			}
			return nil
		})
	}
	return g.Wait()
}

// enabledControllers resolves --controllers: "*" is every wired
// controller; a name that is not wired is an error that lists them.
func enabledControllers(names []string) ([]string, error) {
	var out []string
	for _, n := range names {
		switch {
		case n == "*":
			out = append(out, wired...)
		case slices.Contains(wired, n):
			out = append(out, n)
		default:
			return nil, fmt.Errorf("--controllers: %q is not wired into this build (wired: %v)", n, wired)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// serve listens on addr and runs fn in g until ctx ends.
func serve(ctx context.Context, g *errgroup.Group, addr string, fn func(context.Context, net.Listener) error) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	g.Go(func() error { return fn(ctx, l) })
	return nil
}
