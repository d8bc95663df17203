package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"time"
)

// CertManagerVersion is the cert-manager release the sandbox runs: its
// controller and cainjector (`make cert-manager` builds them from the Go
// module), its chart and CRDs, all from that module version.
const CertManagerVersion = "v1.21.2"

// CertManagerNamespace and CertManagerRelease are where docs/install.md
// installs cert-manager.
const (
	CertManagerNamespace = "cert-manager"
	CertManagerRelease   = "cert-manager"
)

// certManagerImages are the node images of cert-manager's binaries, named
// as the chart's defaults name them (quay.io/jetstack/<name>:<version>).
var certManagerImages = []string{"cert-manager-controller", "cert-manager-cainjector"}

// certManagerValues are the sandbox's values for cert-manager's chart: what
// this build cannot run is switched off with the chart's own values.
// cert-manager's webhook cannot be built outside its module (its server is in
// internal packages) and its startupapicheck Job waits for that webhook;
// without them the API server's schema validation of cert-manager's CRDs
// still applies, cert-manager's own validation and defaulting do not
// (docs/sandbox.md).
const certManagerValues = `# The sandbox's cert-manager: the chart's defaults but for the parts this
# build cannot run (docs/sandbox.md).
crds:
  enabled: true
startupapicheck:
  enabled: false
webhook:
  replicaCount: 0
  # The webhook configurations stay (the chart always renders them), scoped to
  # no namespace, so that the API server calls no webhook that is not there.
  validatingWebhookConfiguration:
    namespaceSelector: &none
      matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: In, values: [no-such-namespace]}
  mutatingWebhookConfiguration:
    namespaceSelector: *none
`

// CertManagerAssets returns the directory of the cert-manager binaries
// `make cert-manager` built into the tools cache, the newest build of
// CertManagerVersion (AADPI_CERT_MANAGER_ASSETS, which make exports,
// names the current one).
func CertManagerAssets() (string, error) {
	dir := os.Getenv("AADPI_CERT_MANAGER_ASSETS")
	if dir == "" {
		home, _ := os.UserHomeDir()
		builds, _ := filepath.Glob(filepath.Join(home, ".cache", "aad-pod-identity", "cert-manager-"+CertManagerVersion+"-*", ".done"))
		var newest time.Time
		for _, b := range builds {
			if fi, err := os.Stat(b); err == nil && fi.ModTime().After(newest) {
				dir, newest = filepath.Dir(b), fi.ModTime()
			}
		}
	}
	for _, b := range []string{"controller", "cainjector"} {
		if _, err := os.Stat(filepath.Join(dir, b)); dir == "" || err != nil {
			return "", fmt.Errorf("cert-manager binaries %s: not built (run `make cert-manager`)", filepath.Join(dir, b))
		}
	}
	return dir, nil
}

// CertManagerChart is the directory of cert-manager's chart that
// BuildNodeImages wrote, and CertManagerValues the sandbox's values file for
// it: `helm install cert-manager <chart> -f <values>` installs it as
// docs/install.md does.
func (i *NodeImages) CertManagerChart() string { return filepath.Join(i.Dir, "charts", "cert-manager") }
func (i *NodeImages) CertManagerValues() string {
	return filepath.Join(i.Dir, "cert-manager-values.yaml")
}

// writeCertManagerChart copies cert-manager's chart out of its Go module
// into the images directory with the version cert-manager's release tool
// stamps into Chart.yaml (the module has v0.0.0), so that its default image
// references name the images built here, and writes the sandbox's values.
func (i *NodeImages) writeCertManagerChart(ctx context.Context, repoRoot string) error {
	src, err := certManagerModule(ctx, repoRoot)
	if err != nil {
		return err
	}
	dst := i.CertManagerChart()
	err = os.CopyFS(dst, os.DirFS(filepath.Join(src, "deploy", "charts", "cert-manager")))
	if err != nil {
		return fmt.Errorf("copying cert-manager's chart: %w", err)
	}
	// The module cache is read-only; the copy keeps its modes.
	if err := filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(p, mode)
	}); err != nil {
		return err
	}
	chart := filepath.Join(dst, "Chart.yaml")
	b, err := os.ReadFile(chart)
	if err != nil {
		return err
	}
	stamped := unstampedVersion.ReplaceAll(b, []byte("${1}: "+CertManagerVersion))
	if len(stamped) == len(b) {
		return errors.New("cert-manager's Chart.yaml: no version or appVersion v0.0.0 to stamp")
	}
	if err := os.WriteFile(chart, stamped, 0o644); err != nil {
		return err
	}
	return os.WriteFile(i.CertManagerValues(), []byte(certManagerValues), 0o644)
}

var unstampedVersion = regexp.MustCompile(`(?m)^(version|appVersion): v0\.0\.0$`)

// certManagerModule is the directory of cert-manager's Go module, the
// version the main module requires (its API types), downloaded if needed.
func certManagerModule(ctx context.Context, repoRoot string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "github.com/cert-manager/cert-manager@"+CertManagerVersion)
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download cert-manager: %w", err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil {
		return "", fmt.Errorf("go mod download cert-manager: %w", err)
	}
	if m.Error != "" || m.Dir == "" {
		return "", fmt.Errorf("go mod download cert-manager: %s", m.Error)
	}
	return m.Dir, nil
}
