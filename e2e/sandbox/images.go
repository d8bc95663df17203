package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// NodeImages are the container images the nodes run, built offline by
// hack/images into one directory: the project's four, the sandbox's pause
// image, a kubectl image for the chart's uninstall hooks, CoreDNS,
// cert-manager's controller and cainjector, and a shell (busybox); beside
// them, cert-manager's chart. Every image
// trusts the fake Azure's CA (appended to its CA bundle), as an image built
// for a cloud with a private CA would, so that pods reach the fake ARM and
// Azure AD over verified TLS with their manifests unchanged.
type NodeImages struct {
	Dir string
	// CA is the CA the fake Azure serves from.
	CA *testca.CA
}

// imageRegistry is the chart's default repository prefix; the images are
// built with the chart's appVersion as tag, so the chart's defaults name them.
const imageRegistry = "ghcr.io/aad-pod-identity"

// nodeImageNames are the archives of a NodeImages directory.
var nodeImageNames = append([]string{"webhook", "assigner", "nmi", "demo", "pause", "kubectl", "coredns", "busybox"}, certManagerImages...)

// BusyboxImage is the sandbox's shell image (Debian's static busybox), for
// tests of the nodes themselves.
const BusyboxImage = "sandbox.test/busybox:1"

// imageAliases are the other names each node's containerd knows an image
// by: the walkthrough's demo image, and the images the chart's uninstall
// hooks name by default.
var imageAliases = map[string][]string{
	"demo":                    {"mcr.microsoft.com/oss/azure/aad-pod-identity/demo:v1.7.5"},
	"pause":                   {sandboxImage},
	"kubectl":                 {"registry.k8s.io/kubectl:v1.37.2"},
	"cert-manager-controller": {"quay.io/jetstack/cert-manager-controller:" + CertManagerVersion},
	"cert-manager-cainjector": {"quay.io/jetstack/cert-manager-cainjector:" + CertManagerVersion},
	"coredns":                 {corednsImage},
	"busybox":                 {BusyboxImage},
}

// sandboxImage is every real node's pod sandbox image (containerd's pinned
// sandbox image): nodes here cannot pull one.
const sandboxImage = "registry.k8s.io/pause:3.10"

const (
	azureCACert = "azure-ca.crt"
	azureCAKey  = "azure-ca.key"
)

// BuildNodeImages creates the fake Azure's CA and builds the node images
// trusting it into dir (hack/images, from the module at repoRoot), from the
// static kubectl in nodeAssets (NodeAssets) and cert-manager's binaries
// (CertManagerAssets) and CoreDNS (CoreDNS), and writes cert-manager's chart
// beside them.
func BuildNodeImages(ctx context.Context, repoRoot, dir, nodeAssets string) (*NodeImages, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	certManager, err := CertManagerAssets()
	if err != nil {
		return nil, err
	}
	ca, err := testca.New("fake-azure-test-ca")
	if err != nil {
		return nil, err
	}
	if err := ca.Save(filepath.Join(dir, azureCACert), filepath.Join(dir, azureCAKey)); err != nil {
		return nil, err
	}
	version, err := chartAppVersion(repoRoot)
	if err != nil {
		return nil, err
	}
	coredns, err := CoreDNS()
	if err != nil {
		return nil, err
	}
	home, _ := os.UserHomeDir()
	// Static like the images' binaries (hack/images), so that one compile serves both.
	cmd := exec.CommandContext(ctx, "go", "run", "-trimpath", "./hack/images", "--out", dir, "--images", strings.Join(nodeImageNames, ","),
		"--registry", imageRegistry, "--version", version, "--extra-ca", filepath.Join(dir, azureCACert),
		"--binary", "kubectl="+filepath.Join(nodeAssets, "static", "kubectl"),
		"--binary", "cert-manager-controller="+filepath.Join(certManager, "controller"),
		"--binary", "cert-manager-cainjector="+filepath.Join(certManager, "cainjector"),
		"--binary", "coredns="+coredns,
		"--deb-cache", filepath.Join(home, ".cache", "aad-pod-identity", "debs"))
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the node images: %w: %s", err, out)
	}
	images := &NodeImages{Dir: dir, CA: ca}
	return images, images.writeCertManagerChart(ctx, repoRoot)
}

// LoadNodeImages opens a directory BuildNodeImages wrote.
func LoadNodeImages(dir string) (*NodeImages, error) {
	for _, name := range nodeImageNames {
		if _, err := os.Stat(filepath.Join(dir, name+".tar")); err != nil {
			return nil, fmt.Errorf("node images: %w (build them with `sandbox images`)", err)
		}
	}
	ca, err := testca.Load(filepath.Join(dir, azureCACert), filepath.Join(dir, azureCAKey))
	if err != nil {
		return nil, fmt.Errorf("node images: the fake Azure's CA: %w", err)
	}
	return &NodeImages{Dir: dir, CA: ca}, nil
}

var appVersionLine = regexp.MustCompile(`(?m)^appVersion:\s*"?([^"\s]+)"?\s*$`)

func chartAppVersion(repoRoot string) (string, error) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "charts", "aad-pod-identity", "Chart.yaml"))
	if err != nil {
		return "", err
	}
	m := appVersionLine.FindSubmatch(b)
	if m == nil {
		return "", errors.New("no appVersion in Chart.yaml")
	}
	return string(m[1]), nil
}

// importImages imports every image into a node's containerd, under its
// built name and its aliases.
func importImages(ctx context.Context, ctr, sock string, images *NodeImages) error {
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, ctr, append([]string{"-a", sock, "-n", "k8s.io"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	for _, name := range nodeImageNames {
		if err := run("images", "import", "--no-unpack", filepath.Join(images.Dir, name+".tar")); err != nil {
			return err
		}
		built, err := builtRef(images.Dir, name)
		if err != nil {
			return err
		}
		for _, alias := range imageAliases[name] {
			if err := run("images", "tag", "--force", built, alias); err != nil {
				return err
			}
		}
	}
	return nil
}

// builtRef is the reference hack/images gave an image (digests.txt).
func builtRef(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "digests.txt"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Fields(string(b)) {
		ref, _, _ := strings.Cut(line, "@")
		if strings.HasPrefix(ref, imageRegistry+"/"+name+":") {
			return ref, nil
		}
	}
	return "", fmt.Errorf("image %s is not in %s/digests.txt", name, dir)
}
