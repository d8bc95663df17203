// Command sandbox runs the local sandbox cluster (see docs/sandbox.md).
//
//	sandbox up [--nodes 2] [--pools 2] [--dir DIR]         run until Ctrl-C, then tear down
//	sandbox images [--out DIR]                             build the real nodes' images (and the fake Azure's CA)
//	sandbox down [--id ID]                                 remove what a killed sandbox left behind
//	sandbox az --dir STATE_DIR identity create -g RG -n N   the walkthrough's az commands, against the fake Azure
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"go.uber.org/zap"

	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	zl, _ := zap.NewDevelopment()
	log := zapr.NewLogger(zl)
	var err error
	switch os.Args[1] {
	case "up":
		err = up(log, os.Args[2:])
	case "images":
		err = images(log, os.Args[2:])
	case "down":
		err = down(os.Args[2:])
	case "az":
		if len(os.Args) < 4 || os.Args[2] != "--dir" {
			fmt.Fprintln(os.Stderr, "usage: sandbox az --dir STATE_DIR identity|role ...")
			os.Exit(2)
		}
		err = az(os.Args[3], os.Args[4:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: sandbox up|images|down|az [flags]")
	os.Exit(2)
}

func up(log logr.Logger, args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	id := fs.String("id", "", "sandbox ID (namespaces aadpi-sbx-<id>-*); random when empty")
	dir := fs.String("dir", "", "state directory (certificates, logs, kubeconfig)")
	listen := fs.String("listen", "127.0.0.1:0", "loopback address the apiserver is forwarded to")
	kubeconfig := fs.String("kubeconfig", "", "also copy the admin kubeconfig here")
	nodes := fs.Int("nodes", 2, "simulated nodes")
	pools := fs.Int("pools", 2, "VMSS pools the nodes are spread over")
	readyFile := fs.String("ready-file", "", "create this file once the cluster and its nodes are up")
	startupTaint := fs.Bool("startup-taint", false, "register nodes with NMI's not-ready taint")
	kubeProxyMode := fs.String("kube-proxy-mode", sandbox.KubeProxyModeFromEnv(), "the nodes' kube-proxy: iptables (AKS's) or nftables; default from SANDBOX_KUBE_PROXY_MODE")
	images := fs.String("images", "", "the nodes' images, built by `sandbox images`; built into <dir>/images when empty")
	_ = fs.Parse(args)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	nodeImages, err := nodeImages(ctx, log, *images, *dir)
	if err != nil {
		return err
	}
	sb, err := sandbox.Start(ctx, sandbox.Options{ID: *id, Dir: *dir, Listen: *listen, Log: log, KubeProxyMode: *kubeProxyMode, NodeImages: nodeImages})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(os.Stderr, "sandbox: tearing down", sb.ID)
		if err := sb.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "sandbox: teardown:", err)
		}
	}()
	az, err := sb.ServeAzure()
	if err != nil {
		return err
	}
	if err := writeAzureEnv(filepath.Join(sb.Dir, AzureEnvFile), sb, az); err != nil {
		return err
	}
	if err := sb.AddNodes(ctx, sandbox.NodeOptions{Count: *nodes, Pools: *pools, StartupTaint: *startupTaint}); err != nil {
		return err
	}
	if *kubeconfig != "" {
		data, err := os.ReadFile(sb.Kubeconfig)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*kubeconfig, data, 0o600); err != nil {
			return err
		}
	}
	if *readyFile != "" {
		if err := os.WriteFile(*readyFile, []byte(sb.Dir+"\n"), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("sandbox %s is up\n  export KUBECONFIG=%s\n  kubectl get nodes\nfake Azure endpoints and credentials: %s\nCtrl-C tears it down.\n",
		sb.ID, sb.Kubeconfig, filepath.Join(sb.Dir, AzureEnvFile))
	<-ctx.Done()
	return nil
}

// AzureEnvFile is the file name, in the state directory, of the fake Azure's
// endpoints, the cluster's service principal, its service-account issuer
// and the nodes' runtime socket (the chart's nmi.criSocket) as shell
// variables, for scripts that install the chart against them.
const AzureEnvFile = "azure.env"

func writeAzureEnv(path string, sb *sandbox.Sandbox, az *sandbox.AzureEndpoints) error {
	vars := []struct{ k, v string }{
		{"SUBSCRIPTION_ID", sandbox.SubscriptionID},
		{"NODE_RESOURCE_GROUP", sandbox.NodeResourceGroup},
		{"TENANT_ID", sb.Azure.TenantID},
		{"AZURE_CLIENT_ID", az.Principal.AppID},
		{"AZURE_CLIENT_SECRET", az.Principal.Secret},
		{"ARM_ENDPOINT", az.ARMEndpoint},
		{"AAD_AUTHORITY_HOST", az.AADAuthorityHost},
		{"OIDC_ISSUER_URL", sb.IssuerURL},
		{"AZURE_CA_FILE", az.CAFile},
		{"CLOUD_CONFIG", az.CloudConfig},
		{"CRI_SOCKET", sb.ChartCRISocket()},
	}
	var b strings.Builder
	for _, kv := range vars {
		// Single quotes: CRI_SOCKET holds "$(NODE_NAME)" for the chart.
		fmt.Fprintf(&b, "%s='%s'\n", kv.k, strings.ReplaceAll(kv.v, "'", `'\''`))
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// nodeImages loads the images in dir, or builds them into <stateDir>/images
// (a temporary directory without one) from the module in the working
// directory.
func nodeImages(ctx context.Context, log logr.Logger, dir, stateDir string) (*sandbox.NodeImages, error) {
	if dir != "" {
		return sandbox.LoadNodeImages(dir)
	}
	if stateDir == "" {
		var err error
		if stateDir, err = os.MkdirTemp("", "aadpi-sbx-images-"); err != nil {
			return nil, err
		}
	}
	return buildImages(ctx, log, ".", filepath.Join(stateDir, "images"))
}

func buildImages(ctx context.Context, log logr.Logger, repo, out string) (*sandbox.NodeImages, error) {
	assets, err := sandbox.NodeAssets()
	if err != nil {
		return nil, err
	}
	log.Info("building the node images", "dir", out)
	return sandbox.BuildNodeImages(ctx, repo, out, assets)
}

// images builds the nodes' images for `up --images`.
func images(log logr.Logger, args []string) error {
	fs := flag.NewFlagSet("images", flag.ExitOnError)
	out := fs.String("out", "build/sandbox-images", "directory for the image archives and the fake Azure's CA")
	repo := fs.String("repo", ".", "the module's directory")
	_ = fs.Parse(args)
	_, err := buildImages(context.Background(), log, *repo, *out)
	return err
}

func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	id := fs.String("id", "", "only the sandbox with this ID; every sandbox when empty")
	_ = fs.Parse(args)
	prefix := sandbox.Prefix
	if *id != "" {
		prefix += *id + "-"
	}
	if err := sandbox.Clean(prefix); err != nil {
		return errors.Join(errors.New("cleaning up"), err)
	}
	return nil
}
