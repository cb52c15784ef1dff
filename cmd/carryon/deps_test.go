package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"carryon/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite docs/img/packages.svg from the code")

// goListDeps returns the transitive imports of pkg under the build tags.
func goListDeps(t *testing.T, tags, pkg string) map[string]bool {
	t.Helper()
	args := []string{"list", "-deps"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	out, err := exec.Command("go", append(args, pkg)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", pkg, err, out)
	}
	deps := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		deps[l] = true
	}
	return deps
}

// modulePackages returns each package of the module (without the
// "carryon/" prefix) with the module packages it imports directly. Tests'
// imports count only with tests set: an integration test of the coordinator
// may run a real node, the coordinator itself may not import it.
func modulePackages(t *testing.T, root string, tests bool) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p struct {
			ImportPath                         string
			Imports, TestImports, XTestImports []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(p.ImportPath, "carryon/")
		var deps []string
		lists := [][]string{p.Imports}
		if tests {
			lists = append(lists, p.TestImports, p.XTestImports)
		}
		for _, lists := range lists {
			for _, d := range lists {
				if d, ok := strings.CutPrefix(d, "carryon/"); ok && d != name && !slices.Contains(deps, d) {
					deps = append(deps, d)
				}
			}
		}
		sort.Strings(deps)
		pkgs[name] = deps
	}
	return pkgs
}

// architectureRules reads the package table of docs/architecture.md: for
// each package, the module packages it may import ("any" for all).
func architectureRules(t *testing.T, root string) map[string][]string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	rules := map[string][]string{}
	_, section, _ := strings.Cut(string(doc), "\n## Packages\n")
	section, _, _ = strings.Cut(section, "\n## ")
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) != 5 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		pkg := strings.TrimSuffix(strings.Trim(strings.TrimSpace(cells[1]), "`"), "/")
		var allowed []string
		for _, d := range strings.Split(cells[3], ",") {
			if d = strings.Trim(strings.TrimSpace(d), "`"); d != "" && d != "—" {
				allowed = append(allowed, strings.TrimSuffix(d, "/"))
			}
		}
		rules[pkg] = allowed
	}
	if len(rules) < 10 {
		t.Fatalf("docs/architecture.md: found %d package rows; is the table still there?", len(rules))
	}
	return rules
}

// TestImportGraph enforces docs/architecture.md's package table: every
// package has a row, imports only what its row allows, and the few rules
// about outside modules hold.
func TestImportGraph(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	root := testenv.RepoRoot(t)
	pkgs, rules := modulePackages(t, root, false), architectureRules(t, root)
	for pkg, deps := range pkgs {
		name := pkg // "carryon" is the carry-on package, carryon/carryon
		allowed, ok := rules[name]
		if !ok {
			t.Errorf("package %s has no row in docs/architecture.md: say what it owns and may import", name)
			continue
		}
		if slices.Contains(allowed, "any") {
			continue
		}
		for _, d := range deps {
			if d != "internal/testenv" && !slices.Contains(allowed, d) {
				t.Errorf("%s imports %s, which docs/architecture.md does not allow (it may import: %s)", name, d, strings.Join(allowed, ", "))
			}
		}
	}
	for pkg, deps := range modulePackages(t, root, true) {
		if pkg != "cmd/carryon" && slices.Contains(deps, "cmd/carryon") {
			t.Errorf("%s's tests import cmd/carryon: nothing below cmd/ may", pkg)
		}
	}
	for pkg := range rules {
		if _, ok := pkgs[pkg]; !ok {
			t.Errorf("docs/architecture.md has a row for %s, which does not exist", pkg)
		}
	}
	banned := []struct {
		pkg, dep, why string
	}{
		{"carryon/model", "github.com/libp2p/go-libp2p", "model is pure functions of weights, no networking"},
		{"carryon/carryon", "github.com/libp2p/go-libp2p", "the carry-on is numerics, no networking"},
		{"carryon/tensor", "github.com/libp2p/go-libp2p", "tensor is numbers only"},
		{"carryon/cmd/carryon", "gorgonia.org/cu", "cu's init exits the process without a GPU: only -tags cuda may link it"},
		{"carryon/cuda", "gorgonia.org/cu", "cu's init exits the process without a GPU: only -tags cuda may link it"},
	}
	for _, b := range banned {
		for dep := range goListDeps(t, "", b.pkg) {
			if dep == b.dep || strings.HasPrefix(dep, b.dep+"/") {
				t.Errorf("%s imports %s: %s", b.pkg, dep, b.why)
				break
			}
		}
	}
	// The tag must really wire the GPU path in.
	if !goListDeps(t, "cuda", "carryon/cuda")["gorgonia.org/cu"] {
		t.Errorf("carryon/cuda with -tags cuda does not import gorgonia.org/cu")
	}
}

// TestArchitecturePicture checks that docs/img/packages.svg is the picture
// of today's import graph; -update rewrites it.
func TestArchitecturePicture(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	root := testenv.RepoRoot(t)
	svg := packageSVG(modulePackages(t, root, false))
	path := filepath.Join(root, "docs", "img", "packages.svg")
	if *update {
		if err := os.WriteFile(path, svg, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	old, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(old, svg) {
		t.Errorf("docs/img/packages.svg is not the picture of today's packages (%v): run go test ./cmd/carryon -run TestArchitecture -update", err)
	}
}

// packageSVG draws packages in rows by depth (a package sits one row above
// the highest package it imports) and an arrow per import.
func packageSVG(pkgs map[string][]string) []byte {
	edges := map[string][]string{}
	for p, deps := range pkgs {
		for _, d := range deps {
			if p != "internal/testenv" {
				edges[p] = append(edges[p], d)
			}
		}
	}
	names := make([]string, 0, len(pkgs))
	for p := range pkgs {
		if p != "internal/testenv" {
			names = append(names, p)
		}
	}
	sort.Strings(names)
	depth := map[string]int{}
	var level func(p string, seen map[string]bool) int
	level = func(p string, seen map[string]bool) int {
		if d, ok := depth[p]; ok {
			return d
		}
		if seen[p] {
			return 0 // a cycle (go would not build); keep drawing
		}
		seen[p] = true
		d := 0
		for _, q := range edges[p] {
			d = max(d, level(q, seen)+1)
		}
		depth[p] = d
		return d
	}
	maxD := 0
	for _, p := range names {
		maxD = max(maxD, level(p, map[string]bool{}))
	}
	rows := make([][]string, maxD+1)
	for _, p := range names {
		rows[depth[p]] = append(rows[depth[p]], p)
	}
	const bw, bh, gapX, gapY, pad = 150, 30, 24, 56, 20
	width := 0
	for _, r := range rows {
		width = max(width, len(r)*(bw+gapX)-gapX)
	}
	width += 2 * pad
	height := 2*pad + len(rows)*(bh+gapY) - gapY
	pos := map[string][2]int{}
	for d, r := range rows {
		y := pad + (maxD-d)*(bh+gapY)
		x0 := (width - (len(r)*(bw+gapX) - gapX)) / 2
		for i, p := range r {
			pos[p] = [2]int{x0 + i*(bw+gapX), y}
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	b.WriteString(`<defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0L10,5L0,10z" fill="#889"/></marker></defs>` + "\n")
	b.WriteString(`<rect width="100%" height="100%" fill="#fff"/>` + "\n")
	for _, p := range names {
		deps := slices.Clone(edges[p])
		sort.Strings(deps)
		for _, q := range deps {
			a, c := pos[p], pos[q]
			fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#aab" marker-end="url(#a)"/>`+"\n", a[0]+bw/2, a[1]+bh, c[0]+bw/2, c[1])
		}
	}
	for _, p := range names {
		a := pos[p]
		fill := "#e8f0fe"
		switch {
		case strings.HasPrefix(p, "cmd/"):
			fill = "#fde8e8"
		case strings.HasPrefix(p, "internal/"):
			fill = "#f1f1f1"
		case p == "node" || p == "coordinator" || p == "swarm" || p == "protocol":
			fill = "#e6f4ea"
		}
		label := p + "/"
		if p == "carryon" {
			label = "carryon/ (the carry-on)"
		}
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" rx="5" fill="%s" stroke="#667"/>`+"\n", a[0], a[1], bw, bh, fill)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", a[0]+bw/2, a[1]+bh/2+4, html.EscapeString(label))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}
