// Command demo checks pod identity from inside a pod; see package demo.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/aad-pod-identity/aad-pod-identity/demo"
)

func main() {
	var cfg demo.Config
	flag.StringVar(&cfg.SubscriptionID, "subscription-id", "", "Subscription of the resource group whose scale sets are listed.")
	flag.StringVar(&cfg.ResourceGroup, "resource-group", "", "Resource group whose scale sets are listed.")
	flag.StringVar(&cfg.IdentityClientID, "identity-client-id", "", "Client ID of the user-assigned identity to get a token for.")
	flag.DurationVar(&cfg.Period, "period", demo.DefaultPeriod, "Time between two rounds of checks.")
	flag.StringVar(&cfg.MetadataEndpoint, "metadata-endpoint", "http://169.254.169.254", "Instance metadata (IMDS) endpoint.")
	flag.StringVar(&cfg.ARMEndpoint, "arm-endpoint", demo.ManagementResource, "Azure Resource Manager endpoint.")
	klog.InitFlags(nil)
	flag.Parse()

	log := klog.NewKlogr()
	d, err := demo.New(cfg)
	if err != nil {
		log.Error(err, "invalid flags")
		os.Exit(2)
	}
	log.Info("starting aad-pod-identity demo pod", "namespace", os.Getenv("MY_POD_NAMESPACE"), "name", os.Getenv("MY_POD_NAME"), "ip", os.Getenv("MY_POD_IP"))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d.Run(logr.NewContext(ctx, log))
}
