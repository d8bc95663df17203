// Package architecture keeps docs/architecture.md's package map true.
package architecture

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/aad-pod-identity/aad-pod-identity"

// admissionPkg is controller-runtime's admission machinery. Its manager
// links it anyway (the webhook server), so the rule is on our own code.
const admissionPkg = "sigs.k8s.io/controller-runtime/pkg/webhook/admission"

type goPackage struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

// rule is one row of the package map: package patterns and what they may import.
type rule struct {
	packages, imports []string
}

func TestPackageMap(t *testing.T) {
	root := repoRoot()
	rules := readPackageMap(t, filepath.Join(root, "docs", "architecture.md"))
	for _, p := range goList(t, root, "./...") {
		pkg := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		r, ok := ruleFor(rules, pkg)
		if !ok {
			t.Errorf("package %s is not in docs/architecture.md's package map", pkg)
			continue
		}
		for _, imp := range p.Imports {
			own, ok := strings.CutPrefix(imp, module+"/")
			if !ok {
				continue
			}
			if !matchesAny(r.imports, own) {
				t.Errorf("%s imports %s, which its row in docs/architecture.md's package map does not allow", pkg, own)
			}
		}
	}
}

// TestComponentsDoNotLinkAdmission: none of the project's code in the
// assigner and NMI binaries uses the admission machinery, and neither links
// the webhook package, whose init registers the admission metrics.
func TestComponentsDoNotLinkAdmission(t *testing.T) {
	root := repoRoot()
	for _, bin := range goList(t, root, "./cmd/assigner", "./cmd/nmi") {
		if slices.Contains(bin.Deps, module+"/webhook") {
			t.Errorf("%s links %s/webhook", bin.ImportPath, module)
		}
		var own []string
		for _, d := range bin.Deps {
			if strings.HasPrefix(d, module+"/") {
				own = append(own, d)
			}
		}
		for _, p := range goList(t, root, own...) {
			if slices.Contains(p.Imports, admissionPkg) {
				t.Errorf("%s, linked into %s, imports %s", p.ImportPath, bin.ImportPath, admissionPkg)
			}
		}
	}
}

// TestNMIDoesNotLinkManager: NMI's binary pages are most of its memory; the
// manager, and k8s.io/apiserver behind its metrics filters, are linked for
// nothing NMI does (internal/metricsserver serves its metrics).
func TestNMIDoesNotLinkManager(t *testing.T) {
	for _, bin := range goList(t, repoRoot(), "./cmd/nmi") {
		for _, d := range bin.Deps {
			if d == "sigs.k8s.io/controller-runtime/pkg/manager" || strings.HasPrefix(d, "k8s.io/apiserver/") {
				t.Errorf("%s links %s", bin.ImportPath, d)
			}
		}
	}
}

// readPackageMap parses the table between the package map markers.
func readPackageMap(t *testing.T, path string) []rule {
	t.Helper()
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(doc), "<!-- package map -->")
	if ok {
		table, _, ok = strings.Cut(table, "<!-- end package map -->")
	}
	if !ok {
		t.Fatalf("%s has no package map markers", path)
	}
	var rules []rule
	sc := bufio.NewScanner(strings.NewReader(table))
	for sc.Scan() {
		cells := strings.Split(strings.Trim(strings.TrimSpace(sc.Text()), "|"), "|")
		if len(cells) != 3 || !strings.Contains(cells[0], "`") {
			continue // header, separator or prose
		}
		rules = append(rules, rule{packages: codeSpans(cells[0]), imports: codeSpans(cells[2])})
	}
	if len(rules) == 0 {
		t.Fatalf("%s: empty package map", path)
	}
	return rules
}

// codeSpans returns the `quoted` names of a table cell.
func codeSpans(cell string) []string {
	parts := strings.Split(cell, "`")
	var out []string
	for i := 1; i < len(parts); i += 2 {
		out = append(out, parts[i])
	}
	return out
}

func ruleFor(rules []rule, pkg string) (rule, bool) {
	for _, r := range rules {
		if matchesAny(r.packages, pkg) {
			return r, true
		}
	}
	return rule{}, false
}

// matchesAny reports whether pkg is one of patterns; "x/..." matches x and
// everything below it.
func matchesAny(patterns []string, pkg string) bool {
	for _, p := range patterns {
		if base, ok := strings.CutSuffix(p, "/..."); ok {
			if pkg == base || strings.HasPrefix(pkg, base+"/") {
				return true
			}
		} else if pkg == p {
			return true
		}
	}
	return false
}

func goList(t *testing.T, dir string, patterns ...string) []goPackage {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json=ImportPath,Imports,Deps"}, patterns...)...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	for dec := json.NewDecoder(bytes.NewReader(out)); dec.More(); {
		var p goPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
