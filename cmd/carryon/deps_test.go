package main

import (
	"os/exec"
	"strings"
	"testing"
)

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

// TestImportGraph enforces the package layering of DESIGN.md §3.
func TestImportGraph(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	banned := []struct {
		pkg, dep, why string
	}{
		{"carryon/node", "carryon/coordinator", "node and coordinator speak only protocol/; neither imports the other"},
		{"carryon/coordinator", "carryon/node", "node and coordinator speak only protocol/; neither imports the other"},
		{"carryon/protocol", "carryon/model", "protocol is the wire vocabulary; it must not pull in the numerics"},
		{"carryon/protocol", "carryon/tensor", "protocol is the wire vocabulary; it must not pull in the numerics"},
		{"carryon/tensor", "carryon/protocol", "tensor is numbers only"},
		{"carryon/model", "carryon/protocol", "model is pure functions of weights"},
		{"carryon/model", "github.com/libp2p/go-libp2p", "model is pure functions of weights, no networking"},
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
