//go:build e2e

package main

import (
	"archive/tar"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// TestImages builds every image and checks what a kubelet would run:
// entrypoint, user, labels, and files (no shell or other program in the
// static images); NMI's iptables, in both backends, and NMI itself, run
// from the image's root inside a network namespace.
func TestImages(t *testing.T) {
	framework.RequireRoot(t)
	home, _ := os.UserHomeDir()
	o := options{out: t.TempDir(), registry: "test.invalid/aadpi", version: "v9.9.9", source: "https://example.invalid/src", revision: "0123abc",
		debCache: filepath.Join(home, ".cache", "aad-pod-identity", "debs"), root: framework.RepoRoot(), images: allImages}
	images, err := build(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range images {
		t.Run(b.name, func(t *testing.T) {
			img := load(t, b.path)
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			wantUser := "65532:65532"
			if b.name == "nmi" {
				wantUser = "0:0"
			}
			c := cfg.Config
			if len(c.Entrypoint) != 1 || c.Entrypoint[0] != "/"+b.name || c.User != wantUser || cfg.OS != "linux" || cfg.Architecture != "amd64" {
				t.Errorf("entrypoint %v user %q platform %s/%s; want [/%s] %q linux/amd64", c.Entrypoint, c.User, cfg.OS, cfg.Architecture, b.name, wantUser)
			}
			for k, v := range map[string]string{"org.opencontainers.image.source": o.source, "org.opencontainers.image.version": o.version, "org.opencontainers.image.revision": o.revision} {
				if c.Labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
				}
			}
			files := extract(t, img, "")
			for _, f := range []string{"etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt", b.name} {
				if _, ok := files[f]; !ok {
					t.Errorf("no %s in the image", f)
				}
			}
			if b.name == "nmi" {
				return
			}
			for name, h := range files {
				if h.Typeflag == tar.TypeReg && h.Mode&0o111 != 0 && name != b.name {
					t.Errorf("executable %s in a static image: only /%s belongs there", name, b.name)
				}
			}
		})
	}
	t.Run("nmi runs iptables in both backends", func(t *testing.T) {
		var nmi built
		for _, b := range images {
			if b.name == "nmi" {
				nmi = b
			}
		}
		nmiRoot(t, load(t, nmi.path))
	})
	t.Run("extra CA and the kubectl image", func(t *testing.T) {
		extra := []byte("-----BEGIN CERTIFICATE-----\nZXh0cmE=\n-----END CERTIFICATE-----\n")
		ca := filepath.Join(t.TempDir(), "extra.crt")
		if err := os.WriteFile(ca, extra, 0o644); err != nil {
			t.Fatal(err)
		}
		kubectl := filepath.Join(t.TempDir(), "kubectl")
		if err := os.WriteFile(kubectl, []byte("\x7fELF stand-in"), 0o755); err != nil {
			t.Fatal(err)
		}
		withCA := o
		withCA.out, withCA.images, withCA.extraCA, withCA.binaries = t.TempDir(), []string{"kubectl"}, ca, map[string]string{"kubectl": kubectl}
		b, err := build(t.Context(), withCA)
		if err != nil {
			t.Fatal(err)
		}
		img := load(t, b[0].path)
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if ep := cfg.Config.Entrypoint; len(ep) != 1 || ep[0] != "/kubectl" || cfg.Config.User != "65532:65532" {
			t.Errorf("kubectl image: entrypoint %v user %q", ep, cfg.Config.User)
		}
		root := t.TempDir()
		extract(t, img, root)
		bundle, err := os.ReadFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"))
		if err != nil || !strings.HasSuffix(string(bundle), string(extra)) || len(bundle) == len(extra) {
			t.Errorf("the bundle (%d bytes, %v) does not end with the extra CA after Debian's", len(bundle), err)
		}
		if fi, err := os.Stat(filepath.Join(root, "kubectl")); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("/kubectl in the image: %v", err)
		}
	})
	t.Run("reproducible", func(t *testing.T) {
		again := o
		again.out, again.images = t.TempDir(), []string{"demo"}
		b, err := build(t.Context(), again)
		if err != nil {
			t.Fatal(err)
		}
		for _, first := range images {
			if first.name == "demo" && first.digest != b[0].digest {
				t.Errorf("demo built twice: %s, then %s", first.digest, b[0].digest)
			}
		}
	})
}

// nmiRoot unpacks NMI's image and, in a network namespace whose kubelet
// marked a backend, writes NMI's kind of rules with the image's iptables
// (tcp, DNAT and conntrack extensions), then lets the image's NMI detect
// the backend and remove them.
func nmiRoot(t *testing.T, img v1.Image) {
	root := t.TempDir()
	extract(t, img, root)
	// The chart mounts the host's lock file there (hostPath FileOrCreate);
	// the runtime provides /dev.
	if err := os.WriteFile(filepath.Join(root, "run", "xtables.lock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mknod(filepath.Join(root, "dev", "null"), syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"legacy", "nft"} {
		suffix := make([]byte, 3)
		_, _ = rand.Read(suffix)
		name := testns.Prefix + "img-" + b + "-" + hex.EncodeToString(suffix)
		if _, err := testns.Create(name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := testns.Delete(name); err != nil {
				t.Errorf("deleting netns %s: %v", name, err)
			}
		})
		in := func(args ...string) string {
			t.Helper()
			out, err := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
			}
			return string(out)
		}
		image := func(args ...string) string { return in(append([]string{"chroot", root}, args...)...) }
		ipt := "/usr/sbin/iptables-" + b
		image(ipt, "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
		image(ipt, "-t", "nat", "-N", "aad-metadata")
		image(ipt, "-t", "nat", "-A", "aad-metadata", "!", "-s", "127.0.0.1/32", "-d", "169.254.169.254/32", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "127.0.0.1:2579")
		image(ipt, "-t", "nat", "-I", "PREROUTING", "1", "-j", "aad-metadata")
		image(ipt, "-t", "filter", "-N", "aad-metadata-guard")
		image(ipt, "-t", "filter", "-A", "aad-metadata-guard", "!", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
		image(ipt, "-t", "filter", "-I", "INPUT", "1", "-j", "aad-metadata-guard")
		// The host's own iptables reads the same kernel tables.
		if rules := in("iptables-" + b + "-save"); !strings.Contains(rules, "--to-destination 127.0.0.1:2579") || !strings.Contains(rules, "ctstate") {
			t.Fatalf("%s: rules written from the image are not in the kernel:\n%s", b, rules)
		}
		image("/nmi", "cleanup")
		if rules := in("iptables-" + b + "-save"); strings.Contains(rules, "aad-metadata") {
			t.Errorf("%s: the image's NMI left its chains behind:\n%s", b, rules)
		}
	}
}

func load(t *testing.T, archive string) v1.Image {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-xf", archive, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("untar %s: %v: %s", archive, err, out)
	}
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ii.IndexManifest()
	if err != nil || len(m.Manifests) != 1 {
		t.Fatalf("index of %s: %v, %d manifests", archive, err, len(m.Manifests))
	}
	img, err := ii.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// extract returns the image's flattened files and, when dir is set, writes
// them there.
func extract(t *testing.T, img v1.Image, dir string) map[string]*tar.Header {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.Trim(path.Clean(h.Name), "/")
		files[name] = h
		if dir == "" {
			continue
		}
		dst := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(dst, os.FileMode(h.Mode)&os.ModePerm)
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(dst, data, os.FileMode(h.Mode)&os.ModePerm)
			}
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, dst)
		case tar.TypeLink:
			err = os.Link(filepath.Join(dir, strings.Trim(h.Linkname, "/")), dst)
		}
		if err != nil {
			t.Fatalf("extracting %s: %v", name, err)
		}
	}
}
