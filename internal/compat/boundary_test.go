package compat_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Only this package reads the shapes earlier releases wrote: outside
// api/v1, which declares them, no code selects a field of api/v1's Legacy*
// groups (tests may still build old objects in composite literals, which
// is how they stand for what an old release stored).
func TestOnlyCompatReadsOldShapes(t *testing.T) {
	root := repoRoot(t)
	old := oldFields(t, filepath.Join(root, "api", "v1"))
	for _, name := range []string{"LegacyRecordSpec", "LegacyPod", "LegacyIdentityRef", "LegacyStatus", "LegacyClientIDMixed", "LegacySelector"} {
		if !old[name] {
			t.Fatalf("api/v1's old fields %v lack %s: the test no longer finds them", old, name)
		}
	}
	skip := []string{filepath.Join(root, "api", "v1"), filepath.Join(root, "internal", "compat")}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && (slices.Contains(skip, path) || strings.HasPrefix(d.Name(), ".") || d.Name() == "bin" || d.Name() == "testdata" || otherModule(root, path)):
			return filepath.SkipDir
		case d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasPrefix(d.Name(), "zz_generated"):
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, sel := range oldSelections(f, old) {
			pos := fset.Position(sel.Pos())
			rel, _ := filepath.Rel(root, pos.Filename)
			t.Errorf("%s:%d selects %s, a field of an earlier release's shape: read it through internal/compat", rel, pos.Line, sel.Sel.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// oldFields are the names of the Legacy* groups api/v1 embeds in today's
// types and of their fields.
func oldFields(t *testing.T, dir string) map[string]bool {
	t.Helper()
	groups := map[string]*ast.StructType{}
	var embedded []string
	fset := token.NewFileSet()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return false
			}
			groups[ts.Name.Name] = st
			for _, field := range st.Fields.List {
				if id, ok := field.Type.(*ast.Ident); ok && len(field.Names) == 0 && strings.HasPrefix(id.Name, "Legacy") {
					embedded = append(embedded, id.Name)
				}
			}
			return false
		})
	}
	old := map[string]bool{}
	for _, g := range embedded {
		old[g] = true
		for _, field := range groups[g].Fields.List {
			for _, n := range field.Names {
				old[n.Name] = true
			}
		}
	}
	return old
}

// oldSelections are the selectors in f of an old field (a package's
// identifier, such as aadv1.LegacyRecordSpec in a composite literal, is
// not one).
func oldSelections(f *ast.File, old map[string]bool) []*ast.SelectorExpr {
	imports := map[string]bool{}
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		name := filepath.Base(path)
		if imp.Name != nil {
			name = imp.Name.Name
		}
		imports[name] = true
	}
	var out []*ast.SelectorExpr
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok || !old[sel.Sel.Name] {
			return true
		}
		if id, ok := sel.X.(*ast.Ident); ok && imports[id.Name] {
			return true
		}
		out = append(out, sel)
		return true
	})
	return out
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for !exists(filepath.Join(dir, "go.mod")) {
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
	return dir
}

// otherModule reports whether dir, below root, is another module's (the
// tools under hack/tools).
func otherModule(root, dir string) bool {
	return dir != root && exists(filepath.Join(dir, "go.mod"))
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
