// Command podinit is the sandbox kubelet's container entry: started in a
// fresh mount namespace (and the pod's network namespace), it builds a root
// that is the machine's root seen through an overlay, so creating mount
// points never touches the real file system, mounts the pod's volumes at
// their paths, chroots and execs the container's program.
//
//	podinit --state DIR [--mount SRC:DST[:ro]]... [--workdir DIR] -- PROGRAM ARGS...
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

type mounts []string

func (m *mounts) String() string     { return strings.Join(*m, ",") }
func (m *mounts) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	var ms mounts
	state := flag.String("state", "", "per-container scratch directory (must exist)")
	workdir := flag.String("workdir", "/", "working directory inside the container")
	flag.Var(&ms, "mount", "SRC:DST[:ro] bind mount (repeatable)")
	flag.Parse()
	if err := run(*state, *workdir, ms, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "podinit:", err)
		os.Exit(127)
	}
}

func run(state, workdir string, ms []string, argv []string) error {
	if state == "" || len(argv) == 0 {
		return errors.New("usage: podinit --state DIR [--mount SRC:DST[:ro]]... -- PROGRAM ARGS")
	}
	// The caller unshared the mount namespace and made / private (Go does
	// both for CLONE_NEWNS), so nothing below is seen outside this process.
	scratch := filepath.Join(state, "scratch")
	root := filepath.Join(state, "root")
	for _, d := range []string{scratch, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// Upper and work dirs on a tmpfs: overlayfs refuses layers that overlap
	// the lower one, and the lower one is /.
	if err := unix.Mount("tmpfs", scratch, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("tmpfs: %w", err)
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(scratch, d), 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=/,upperdir=%s/upper,workdir=%s/work", scratch, scratch)
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("overlay root: %w", err)
	}
	// /run is left to the overlay: a bind of the real one would let mount
	// points under /var/run (a symlink to it) be created outside.
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if err := bind(d, filepath.Join(root, d), false); err != nil {
			return err
		}
	}
	for _, m := range ms {
		parts := strings.Split(m, ":")
		if len(parts) < 2 || len(parts) > 3 || !filepath.IsAbs(parts[1]) {
			return fmt.Errorf("bad --mount %q: want SRC:DST[:ro] with an absolute DST", m)
		}
		// Resolve symlinks (e.g. /var/run → /run) inside the new root, never
		// through the real one.
		dst, err := securejoin.SecureJoin(root, parts[1])
		if err != nil {
			return fmt.Errorf("mount point %s: %w", parts[1], err)
		}
		if err := bind(parts[0], dst, len(parts) == 3 && parts[2] == "ro"); err != nil {
			return err
		}
	}
	if err := unix.Chroot(root); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := os.MkdirAll(workdir, 0o755); err != nil {
		return err
	}
	if err := os.Chdir(workdir); err != nil {
		return err
	}
	return syscall.Exec(argv[0], argv, os.Environ())
}

// bind mounts src at dst, creating dst (a directory or an empty file, like
// src) first.
func bind(src, dst string, readOnly bool) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("mount source: %w", err)
	}
	if fi.IsDir() {
		err = os.MkdirAll(dst, 0o755)
	} else if err = os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
		var f *os.File
		if f, err = os.OpenFile(dst, os.O_CREATE|os.O_RDONLY, 0o644); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dst, err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, dst, err)
	}
	if readOnly {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only %s: %w", dst, err)
		}
	}
	return nil
}
