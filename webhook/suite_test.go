//go:build integration

package webhook

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// The envtest suite: one real apiserver for the package, which calls the
// webhook over TLS through the configurations in config/webhook. Its
// globals are set once controlPlane has started.
var (
	testEnv *envtest.Environment
	cfg     *rest.Config
	admin   client.Client
	// kubectlArgv is the control plane's kubectl with the flags that make it
	// act as a cluster admin.
	kubectlArgv []string
)

const (
	webhookSA  = "aad-pod-identity/aad-pod-identity-webhook"
	assignerSA = "aad-pod-identity/aad-pod-identity-assigner"
)

// controlPlane starts on the first integration test that runs.
var controlPlane = &framework.Shared{
	Options: framework.Options{Webhooks: true},
	Setup: func(env *envtest.Environment, c *rest.Config) error {
		testEnv, cfg = env, c
		var err error
		if admin, err = client.New(cfg, client.Options{Scheme: identity.Scheme()}); err != nil {
			return err
		}
		user, err := env.AddUser(envtest.User{Name: "test-admin", Groups: []string{"system:masters"}}, nil)
		if err != nil {
			return err
		}
		k, err := user.Kubectl()
		if err != nil {
			return err
		}
		kubectlArgv = append([]string{filepath.Join(env.BinaryAssetsDirectory, "kubectl")}, k.Opts...)
		return grantPodEditing(context.Background())
	},
}

// grantPodEditing lets every authenticated user edit pods, so that a denial
// in the tests comes from the webhook and not from RBAC.
func grantPodEditing(ctx context.Context) error {
	role := &rbacv1.ClusterRole{}
	role.Name = "test-pod-editor"
	role.Rules = []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"*"}}}
	bindingObj := &rbacv1.ClusterRoleBinding{}
	bindingObj.Name = "test-pod-editor"
	bindingObj.RoleRef = rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name}
	bindingObj.Subjects = []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:authenticated"}}
	for _, obj := range []client.Object{role, bindingObj} {
		if err := admin.Create(ctx, obj); err != nil {
			return fmt.Errorf("creating %s: %w", obj.GetName(), err)
		}
	}
	return nil
}

// startWebhook runs the webhook, as cmd/webhook does, against the suite's
// apiserver until the test ends.
func startWebhook(t *testing.T, opts Options) (stop func()) {
	t.Helper()
	controlPlane.Start(t)
	wio := testEnv.WebhookInstallOptions
	opts.Port, opts.CertDir, opts.CertName, opts.KeyName = wio.LocalServingPort, wio.LocalServingCertDir, "tls.crt", "tls.key"
	opts.MetricsAddr, opts.ProbeAddr = "0", "127.0.0.1:0"
	if opts.TrustedServiceAccounts == nil {
		opts.TrustedServiceAccounts = []string{webhookSA, assignerSA}
	}
	ctx, cancel, done := runManager(t, opts)
	// Ready once a labelled pod is admitted, i.e. TLS is served and the
	// cache synced.
	if err := waitServing(ctx, done); err != nil {
		cancel()
		t.Fatalf("webhook did not become ready: %v", err)
	}
	var once bool
	stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("webhook manager: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// runManager starts a webhook manager; cancel stops it and done reports how
// it ended.
func runManager(t *testing.T, opts Options) (context.Context, context.CancelFunc, <-chan error) {
	t.Helper()
	controlPlane.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := NewManager(ctx, cfg, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	return ctx, cancel, done
}

// waitServing returns once the webhook admits a labelled pod, or with the
// manager's own error if it stopped first. The deadline is generous: CI runs
// several envtest packages at once under the race detector.
func waitServing(ctx context.Context, done <-chan error) error {
	probe := &corev1.Pod{}
	probe.Namespace, probe.GenerateName = "default", "probe-"
	probe.Labels = map[string]string{"aadpodidbinding": "probe"}
	probe.Spec.Containers = []corev1.Container{{Name: "c", Image: "probe"}}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := admin.Create(ctx, probe.DeepCopy(), client.DryRunAll)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case merr := <-done:
			return fmt.Errorf("manager stopped: %w (last admission: %w)", merr, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
