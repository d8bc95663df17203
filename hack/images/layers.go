package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// epoch is every file's and the image's time: the same inputs give the
// same digests.
var epoch = time.Unix(0, 0).UTC()

// tree is a layer's content: paths (no leading slash) to tar headers and
// bodies, written sorted.
type tree struct {
	hdrs  map[string]*tar.Header
	files map[string][]byte
}

func newTree() *tree { return &tree{hdrs: map[string]*tar.Header{}, files: map[string][]byte{}} }

func (t *tree) dir(name string, mode int64, uid int) {
	t.hdrs[name] = &tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid}
}

func (t *tree) file(name string, mode int64, data []byte) {
	t.hdrs[name] = &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}
	t.files[name] = data
}

func (t *tree) symlink(name, target string) {
	t.hdrs[name] = &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}
}

// parents adds the directories above every entry that has none.
func (t *tree) parents() {
	for name := range t.hdrs {
		for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := t.hdrs[d]; !ok {
				t.dir(d, 0o755, 0)
			}
		}
	}
}

// layer writes the tree as a gzipped tar layer.
func (t *tree) layer() (v1.Layer, error) {
	t.parents()
	names := make([]string, 0, len(t.hdrs))
	for n := range t.hdrs {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := *t.hdrs[n]
		h.ModTime, h.AccessTime, h.ChangeTime, h.Format = epoch, time.Time{}, time.Time{}, tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(t.files[n]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	// Compressed once: the digest and every archive the layer goes into
	// (the base is in all of them) reuse the gzipped bytes.
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
}

// baseLayer is what distroless/static gives: root and nonroot users, CA
// certificates (Debian's bundle, built from its ca-certificates package as
// update-ca-certificates would) followed by extraCA, /tmp and the nonroot
// home.
func baseLayer(ctx context.Context, cache string, extraCA []byte) (v1.Layer, error) {
	t := newTree()
	t.file("etc/passwd", 0o644, fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonRoot, nonRoot))
	t.file("etc/group", 0o644, fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", nonRoot))
	t.file("etc/nsswitch.conf", 0o644, []byte("hosts: files dns\n"))
	t.dir("tmp", 0o1777, 0)
	t.dir("root", 0o700, 0)
	t.dir("home/nonroot", 0o700, nonRoot)
	certs, deb, err := unpackPackage(ctx, cache, "ca-certificates")
	if err != nil {
		return nil, err
	}
	var names []string
	for n := range certs.files {
		if strings.HasPrefix(n, "usr/share/ca-certificates/") && strings.HasSuffix(n, ".crt") {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no certificates in %s", deb)
	}
	sort.Strings(names)
	var bundle []byte
	for _, n := range names {
		bundle = append(bundle, certs.files[n]...)
	}
	t.file("etc/ssl/certs/ca-certificates.crt", 0o644, append(bundle, extraCA...))
	return t.layer()
}

// binaryLayer holds one executable at target.
func binaryLayer(src, target string) (v1.Layer, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	t := newTree()
	t.file(strings.TrimPrefix(target, "/"), 0o755, data)
	return t.layer()
}

// debianLayer unpacks pkgs and their dependencies, as dpkg would minus the
// maintainer scripts. The one thing those scripts do that matters here is
// update-alternatives' `iptables` links: they point at the nf_tables
// variant, Debian's default, and NMI picks the node's backend itself.
func debianLayer(ctx context.Context, cache string, pkgs []string) (v1.Layer, error) {
	debs, err := fetchDebs(ctx, cache, pkgs, true)
	if err != nil {
		return nil, err
	}
	t := newTree()
	var manifest strings.Builder
	for _, d := range debs {
		if err := unpackDeb(d.file, t); err != nil {
			return nil, err
		}
		fmt.Fprintf(&manifest, "%s %s\n", d.name, d.version)
	}
	for _, tool := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		t.symlink("usr/sbin/"+tool, strings.Replace(tool, "tables", "tables-nft", 1))
	}
	// The chart mounts the host's xtables lock at /run/xtables.lock.
	t.dir("run", 0o755, 0)
	// What is in the image, for scanners and people.
	t.file("usr/share/aad-pod-identity/debian-packages", 0o644, []byte(manifest.String()))
	return t.layer()
}

// busyboxLayer is Debian's busybox-static, with /bin/sh.
func busyboxLayer(ctx context.Context, cache string) (v1.Layer, error) {
	t, _, err := unpackPackage(ctx, cache, "busybox-static")
	if err != nil {
		return nil, err
	}
	t.symlink("bin/sh", "busybox")
	return t.layer()
}

// unpackPackage is the files of one Debian package (not its dependencies)
// and the .deb they came from.
func unpackPackage(ctx context.Context, cache, name string) (*tree, string, error) {
	debs, err := fetchDebs(ctx, cache, []string{name}, false)
	if err != nil {
		return nil, "", err
	}
	t := newTree()
	return t, debs[0].file, unpackDeb(debs[0].file, t)
}

// unpackDeb adds a .deb's files to t (dpkg-deb reads the data archive
// whatever its compression).
func unpackDeb(file string, t *tree) error {
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", file)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w: %s", file, err, stderr.String())
	}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", file, err)
		}
		name := strings.Trim(path.Clean(h.Name), "/")
		if name == "." || name == "" {
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if _, ok := t.hdrs[name]; !ok {
				t.dir(name, h.Mode, 0)
			}
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				return err
			}
			t.file(name, h.Mode, data)
		case tar.TypeSymlink:
			t.symlink(name, h.Linkname)
		case tar.TypeLink:
			t.hdrs[name] = &tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: strings.Trim(path.Clean(h.Linkname), "/"), Mode: h.Mode}
		}
	}
}
