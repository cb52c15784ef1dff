package buildinfo

import (
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/cpu"
)

// TestGet: the fields come from where they should, and Write prints them.
func TestGet(t *testing.T) {
	i := Get()
	if i.GoVersion != runtime.Version() || i.OS != runtime.GOOS || i.Arch != runtime.GOARCH {
		t.Errorf("Get() = %+v: wrong toolchain or target", i)
	}
	if i.Version == "" || i.Commit == "" || i.Kernel == "" {
		t.Errorf("Get() = %+v: empty version, commit or kernel", i)
	}
	if runtime.GOARCH == "amd64" && cpu.X86.HasAVX2 != slices.Contains(i.Features, "avx2") {
		t.Errorf("features %v disagree with x/sys/cpu on AVX2", i.Features)
	}
	var b strings.Builder
	if err := i.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"carryon " + i.Version, i.Commit, i.GoVersion, "gemm:     " + i.Kernel, "int8:     " + i.Int8, "kernels:  " + i.Level, "cuda:"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("Write output lacks %q:\n%s", want, b.String())
		}
	}
}

// TestLinkerVersion: values set with -ldflags -X take precedence.
func TestLinkerVersion(t *testing.T) {
	old, oldC := Version, Commit
	t.Cleanup(func() { Version, Commit = old, oldC })
	Version, Commit = "v9.9.9", "cafe"
	if i := Get(); i.Version != "v9.9.9" || i.Commit != "cafe" {
		t.Errorf("Get() = %q %q, want the linker's values", i.Version, i.Commit)
	}
}
