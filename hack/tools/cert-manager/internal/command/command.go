// Package command is what both cert-manager mains share: flags with
// cert-manager's logging flags, logging set up as cert-manager does, and a
// context that ends on SIGINT or SIGTERM.
package command

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"

	logf "github.com/cert-manager/cert-manager/pkg/logs"
)

// Main parses the command line into fs (with cert-manager's logging flags
// added) and runs run until it returns or a signal arrives; it exits 2 on
// bad flags and 1 when run fails.
func Main(name string, fs *pflag.FlagSet, run func(context.Context) error) {
	logging := logsapi.NewLoggingConfiguration()
	logf.AddFlags(logging, fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	logf.InitLogs()
	if err := logf.ValidateAndApply(logging); err != nil {
		fmt.Fprintln(os.Stderr, "logging:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(logf.NewContext(ctx, logf.Log, name))
	stop()
	if err != nil {
		logf.Log.Error(err, "cert-manager "+name+" failed")
	}
	logf.FlushLogs()
	if err != nil {
		os.Exit(1)
	}
}

// Cluster is how both binaries reach the API server and elect a leader,
// with cert-manager's flag names and defaults.
type Cluster struct {
	Kubeconfig, LeaderNamespace               string
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// AddFlags adds the Cluster flags to fs.
func (c *Cluster) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "Kubeconfig; in-cluster configuration when empty.")
	fs.StringVar(&c.LeaderNamespace, "leader-election-namespace", "kube-system", "Namespace of the leader election Lease.")
	fs.DurationVar(&c.LeaseDuration, "leader-election-lease-duration", 60*time.Second, "Leader election lease duration.")
	fs.DurationVar(&c.RenewDeadline, "leader-election-renew-deadline", 40*time.Second, "Leader election renew deadline.")
	fs.DurationVar(&c.RetryPeriod, "leader-election-retry-period", 15*time.Second, "Leader election retry period.")
}
