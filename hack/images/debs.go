package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// deb is one package file from the Debian archive.
type deb struct{ name, version, file string }

// aptUpdate runs apt-get update at most once per build, and only when a
// package is unknown (a fresh machine has no package lists).
var aptUpdate = sync.OnceValue(func() error {
	if out, err := exec.Command("apt-get", "update", "-qq").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %w: %s", err, out)
	}
	return nil
})

// fetchDebs returns the candidate versions of pkgs (with their
// dependencies when recursive) from the machine's apt sources, downloading
// into cache the ones not there yet.
func fetchDebs(ctx context.Context, cache string, pkgs []string, recursive bool) ([]deb, error) {
	names := pkgs
	if recursive {
		var err error
		if names, err = dependencies(ctx, pkgs); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	out := make([]deb, 0, len(names))
	for _, name := range names {
		d, err := fetchDeb(ctx, cache, name)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// dependencies lists pkgs and everything they depend on (not recommends).
func dependencies(ctx context.Context, pkgs []string) ([]string, error) {
	args := append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"}, pkgs...)
	out, err := aptCache(ctx, args...)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// Package names start a line; their relations are indented, and
		// virtual packages are shown in <angle brackets>.
		if l := sc.Text(); l != "" && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "<") {
			seen[l] = true
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// fetchDeb downloads the candidate version of name unless cache has it.
func fetchDeb(ctx context.Context, cache, name string) (deb, error) {
	show, err := aptCache(ctx, "show", "--no-all-versions", name)
	if err != nil {
		return deb{}, err
	}
	d := deb{name: name, version: field(show, "Version")}
	arch := field(show, "Architecture")
	if d.version == "" || arch == "" {
		return deb{}, fmt.Errorf("apt-cache show %s: no Version or Architecture", name)
	}
	// apt-get download's file name: the epoch's colon is escaped.
	d.file = filepath.Join(cache, fmt.Sprintf("%s_%s_%s.deb", name, strings.ReplaceAll(d.version, ":", "%3a"), arch))
	if _, err := os.Stat(d.file); err == nil {
		return d, nil
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-qq", name+"="+d.version)
	cmd.Dir = cache
	if out, err := cmd.CombinedOutput(); err != nil {
		return deb{}, fmt.Errorf("apt-get download %s=%s: %w: %s", name, d.version, err, out)
	}
	if _, err := os.Stat(d.file); err != nil {
		return deb{}, fmt.Errorf("apt-get download %s=%s wrote no %s", name, d.version, filepath.Base(d.file))
	}
	return d, nil
}

// aptCache runs apt-cache, updating the package lists once if it fails.
func aptCache(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", args...).Output()
	if err == nil && len(out) > 0 {
		return out, nil
	}
	if uerr := aptUpdate(); uerr != nil {
		return nil, uerr
	}
	out, err = exec.CommandContext(ctx, "apt-cache", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// field returns a control field of the first stanza.
func field(stanza []byte, name string) string {
	for _, l := range strings.Split(string(stanza), "\n") {
		if v, ok := strings.CutPrefix(l, name+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
