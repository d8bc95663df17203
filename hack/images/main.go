// Command images builds the project's container images with no container
// engine and no registry: static binaries on a distroless-like base (CA
// certificates, a non-root user), and NMI on a minimal Debian root unpacked
// from the archive's .debs (iptables in both backends, conntrack). Each
// image is written as an OCI archive, <out>/<name>.tar, that
// `ctr -n k8s.io images import` and `docker load` read; <out>/digests.txt
// lists the references and digests.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
)

func main() {
	var o options
	home, _ := os.UserHomeDir()
	flag.StringVar(&o.out, "out", "build/images", "Directory for the OCI archives and digests.txt.")
	flag.StringVar(&o.registry, "registry", "ghcr.io/aad-pod-identity", "Repository prefix of the image references.")
	flag.StringVar(&o.version, "version", "v0.1.0", "Image tag and org.opencontainers.image.version.")
	flag.StringVar(&o.source, "source", "https://github.com/aad-pod-identity/aad-pod-identity", "org.opencontainers.image.source.")
	flag.StringVar(&o.root, "root", ".", "The module's directory.")
	flag.StringVar(&o.revision, "revision", "", "org.opencontainers.image.revision (the git commit).")
	flag.StringVar(&o.debCache, "deb-cache", filepath.Join(home, ".cache", "aad-pod-identity", "debs"), "Where downloaded .debs are kept between builds.")
	flag.StringVar(&o.extraCA, "extra-ca", "", "PEM file of CA certificates appended to every image's bundle (a private CA, such as the sandbox's fake Azure).")
	o.binaries = map[string]string{}
	flag.Func("binary", "NAME=PATH: a prebuilt static binary, built into image NAME with entrypoint /NAME (repeatable; e.g. kubectl for the chart's hooks).", func(v string) error {
		name, path, ok := strings.Cut(v, "=")
		if !ok || name == "" || path == "" {
			return fmt.Errorf("want NAME=PATH, got %q", v)
		}
		o.binaries[name] = path
		return nil
	})
	images := flag.String("images", strings.Join(allImages, ","), "Comma-separated images to build (pause too, for nodes that cannot pull one).")
	flag.Parse()
	o.images = strings.Split(*images, ",")

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	built, err := build(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
	for _, b := range built {
		fmt.Printf("%s@%s %s (%d MiB)\n", b.ref, b.digest, b.path, b.size>>20)
	}
}
