package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"
)

// allImages are the images of the project, named after their binaries.
var allImages = []string{"webhook", "assigner", "nmi", "demo"}

// packages maps each image to its main package: the project's images, and
// the sandbox's pause image for nodes that cannot pull one.
var packages = map[string]string{
	"webhook": "./cmd/webhook", "assigner": "./cmd/assigner", "nmi": "./cmd/nmi", "demo": "./cmd/demo",
	"pause": "./e2e/cmd/pause",
}

// nonRoot is distroless's nonroot user and group.
const nonRoot = 65532

// nmiPackages are NMI's Debian packages; their dependencies are resolved
// by apt.
var nmiPackages = []string{"iptables", "conntrack"}

// busybox is the sandbox's shell image, Debian's static busybox, for the
// sandbox's own tests of its nodes: its shell runs every applet (wget,
// httpd, ip) with no links.
const busybox = "busybox"

type options struct {
	out, registry, version, source, revision, debCache string
	// extraCA is a PEM file appended to every image's CA bundle (a private
	// CA the images must trust: the sandbox's fake Azure).
	extraCA string
	// binaries are prebuilt static binaries, each an image of its name
	// (--binary name=path): kubectl for the chart's hooks, and the cluster
	// add-ons built in the tools modules (cert-manager, CoreDNS).
	binaries map[string]string
	// root is the module's directory (the binaries are ./cmd/<name>).
	root   string
	images []string
}

// built is one image written to disk.
type built struct {
	name, ref, path string
	digest          v1.Hash
	size            int64
}

// build compiles the binaries and writes each image's OCI archive.
func build(ctx context.Context, o options) ([]built, error) {
	var compiled []string
	for _, name := range o.images {
		_, prebuilt := o.binaries[name]
		switch _, ok := packages[name]; {
		case prebuilt, name == busybox:
		case ok:
			compiled = append(compiled, name)
		default:
			return nil, fmt.Errorf("unknown image %q: not %s, a package of this module (%s), and no --binary %s=PATH", name, busybox, strings.Join(slices.Sorted(maps.Keys(packages)), ", "), name)
		}
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, err
	}
	bin, err := os.MkdirTemp("", "images-bin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bin)
	if err := buildBinaries(ctx, o.root, bin, compiled); err != nil {
		return nil, err
	}
	var extraCA []byte
	if o.extraCA != "" {
		if extraCA, err = os.ReadFile(o.extraCA); err != nil {
			return nil, fmt.Errorf("--extra-ca: %w", err)
		}
	}
	base, err := baseLayer(ctx, o.debCache, extraCA)
	if err != nil {
		return nil, err
	}
	// One image per core: gzipping the layers is most of the time.
	out := make([]built, len(o.images))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, name := range o.images {
		g.Go(func() (err error) {
			out[i], err = o.image(ctx, name, base, bin)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var digests strings.Builder
	for _, b := range out {
		fmt.Fprintf(&digests, "%s@%s\n", b.ref, b.digest)
	}
	return out, os.WriteFile(filepath.Join(o.out, "digests.txt"), []byte(digests.String()), 0o644)
}

// image writes image name's archive: base, NMI's Debian packages, its app layer.
func (o options) image(ctx context.Context, name string, base v1.Layer, bin string) (built, error) {
	layers := []v1.Layer{base}
	user := fmt.Sprintf("%d:%d", nonRoot, nonRoot)
	if name == "nmi" {
		// Root: iptables in the node's network namespace needs it; the
		// chart grants only NET_ADMIN and NET_RAW.
		root, err := debianLayer(ctx, o.debCache, nmiPackages)
		if err != nil {
			return built{}, err
		}
		layers, user = append(layers, root), "0:0"
	}
	app, entrypoint, err := o.appLayer(ctx, name, bin)
	if err != nil {
		return built{}, err
	}
	img, err := assemble(append(layers, app), imageConfig{entrypoint: entrypoint, user: user, labels: o.labels(name)})
	if err != nil {
		return built{}, fmt.Errorf("image %s: %w", name, err)
	}
	b := built{name: name, ref: fmt.Sprintf("%s/%s:%s", o.registry, name, o.version), path: filepath.Join(o.out, name+".tar")}
	if b.digest, b.size, err = writeArchive(b.path, b.ref, img); err != nil {
		return built{}, fmt.Errorf("image %s: %w", name, err)
	}
	return b, nil
}

// appLayer is the layer of image name above the base, and its entrypoint:
// the binary, prebuilt or compiled into bin, at /<name>; busybox's shell.
func (o options) appLayer(ctx context.Context, name, bin string) (v1.Layer, string, error) {
	if name == busybox {
		l, err := busyboxLayer(ctx, o.debCache)
		return l, "/bin/sh", err
	}
	src, prebuilt := o.binaries[name]
	if !prebuilt {
		src = filepath.Join(bin, name)
	}
	l, err := binaryLayer(src, "/"+name)
	return l, "/" + name, err
}

func (o options) labels(name string) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":   "aad-pod-identity " + name,
		"org.opencontainers.image.source":  o.source,
		"org.opencontainers.image.version": o.version,
	}
	if o.revision != "" {
		l["org.opencontainers.image.revision"] = o.revision
	}
	return l
}

// buildBinaries builds the images' static binaries (no cgo: the images
// have no libc for them) into dir.
func buildBinaries(ctx context.Context, root, dir string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	pkgs := make([]string, len(names))
	for i, n := range names {
		pkgs[i] = packages[n]
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w: %s", err, out)
	}
	return nil
}
