//go:build integration

package assigner_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
)

// process is the real assigner binary running against the world's control
// plane and fake cloud, so that its memory is its own.
type process struct {
	cmd *exec.Cmd
	log *os.File
}

// runBinary stops the world's in-process assigner and starts the binary at
// path in its place: a service principal of a fake AAD, the fake ARM and
// its CA, the world's namespaces, no leader election.
func (w *world) runBinary(path string, batchWindow time.Duration) *process {
	w.t.Helper()
	w.stop()
	dir := w.t.TempDir()
	signer, err := fakeazure.NewSigner()
	if err != nil {
		w.t.Fatal(err)
	}
	aad, aadSrv, err := fakeazure.StartAAD(signer, w.ca)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(aadSrv.Close)
	sp := aad.CreateServicePrincipal("tenant-bench")
	azureJSON, err := json.Marshal(map[string]string{"cloud": "AzurePublicCloud", "tenantId": sp.TenantID, "subscriptionId": w.sub,
		"aadClientId": sp.AppID, "aadClientSecret": sp.Secret})
	if err != nil {
		w.t.Fatal(err)
	}
	files := map[string][]byte{"azure.json": azureJSON, "config.yaml": []byte(fmt.Sprintf(`apiVersion: config.aadpodidentity.k8s.io/v1alpha1
kind: Configuration
assigner:
  leaderElect: false
  batchWindow: %s
  gcGracePeriod: 1h
  driftCheckPeriod: 1h
`, batchWindow))}
	if files["kubeconfig"], err = clientcmd.Write(kubeconfig(w)); err != nil {
		w.t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			w.t.Fatal(err)
		}
	}
	if err := w.ca.WritePEM(filepath.Join(dir, "ca.pem")); err != nil {
		w.t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "assigner.log"))
	if err != nil {
		w.t.Fatal(err)
	}
	cmd := exec.Command(path, "--kubeconfig", filepath.Join(dir, "kubeconfig"), "--azure-config-file", filepath.Join(dir, "azure.json"),
		"--arm-endpoint", w.arm.URL, "--aad-authority-host", aadSrv.URL, "--config", filepath.Join(dir, "config.yaml"),
		"--metrics-bind-address", "0", "--health-probe-bind-address", "0")
	cmd.Args = append(cmd.Args, strings.Fields(os.Getenv("ASSIGNER_BENCH_ARGS"))...)
	cmd.Env = append(os.Environ(), "POD_NAMESPACE="+w.recordNS, "SSL_CERT_FILE="+filepath.Join(dir, "ca.pem"))
	cmd.Env = append(cmd.Env, strings.Fields(os.Getenv("ASSIGNER_BENCH_ENV"))...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		w.t.Fatalf("starting %s: %v", path, err)
	}
	p := &process{cmd: cmd, log: logFile}
	w.t.Cleanup(p.stop)
	return p
}

func (p *process) stop() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
	}
	_ = p.log.Close()
}

// rss is the process's resident set now and at its peak.
func (p *process) rss() string { return vmRSS(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid)) }

// exitedEarly returns the end of the log if the process is gone.
func (p *process) exitedEarly() error {
	if err := p.cmd.Process.Signal(syscall.Signal(0)); err == nil {
		return nil
	}
	data, _ := os.ReadFile(p.log.Name())
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return fmt.Errorf("assigner exited: %s", strings.Join(lines[max(0, len(lines)-5):], "\n"))
}

// kubeconfig reaches the world's control plane as the test client does.
func kubeconfig(w *world) clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["bench"] = &clientcmdapi.Cluster{Server: w.cfg.Host, CertificateAuthorityData: w.cfg.CAData}
	cfg.AuthInfos["bench"] = &clientcmdapi.AuthInfo{ClientCertificateData: w.cfg.CertData, ClientKeyData: w.cfg.KeyData, Token: w.cfg.BearerToken}
	cfg.Contexts["bench"] = &clientcmdapi.Context{Cluster: "bench", AuthInfo: "bench"}
	cfg.CurrentContext = "bench"
	return *cfg
}
