// Package buildinfo says what a carryon binary is: its version and commit
// (set by scripts/release.sh through -ldflags -X, else read from the Go
// toolchain's VCS stamp), the Go version, the CPU features the kernels can
// use and whether CUDA was built in.
package buildinfo

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"carryon/cuda"
	"carryon/tensor"
)

// Version and Commit are set at link time by scripts/release.sh:
//
//	-ldflags "-X carryon/internal/buildinfo.Version=v0.3.0 -X carryon/internal/buildinfo.Commit=abc123"
//
// Left empty, Info falls back to the VCS stamp of `go build`.
var Version, Commit string

// Info describes the running binary.
type Info struct {
	Version   string   // release version, or "dev"
	Commit    string   // VCS revision (with "+dirty" for a modified tree), or "unknown"
	GoVersion string   // runtime.Version()
	OS, Arch  string   // GOOS, GOARCH
	Features  []string // CPU features the kernels look for, those present
	Kernel    string   // the GEMM kernel in use (tensor.GemmKernel)
	Int8      string   // the int8 kernels in use: in place (tensor.Q8Path) and packed (tensor.Q8PackedPath)
	Level     string   // the kernel level in use, with CARRYON_CPU and the CPU's own where they differ
	CUDA      bool     // built with the cuda tag (cuda.Available)
}

// Get returns the running binary's Info.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version(), OS: runtime.GOOS,
		Arch: runtime.GOARCH, Features: cpuFeatures(), Kernel: tensor.GemmKernel(), CUDA: cuda.Available,
		Int8: tensor.Q8Path() + ", packed " + tensor.Q8PackedPath(), Level: levelText(tensor.KernelCap())}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if i.Commit == "" && rev != "" {
			i.Commit = rev + dirty
		}
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	return i
}

// levelText says which kernel level runs, and why when it is not the CPU's.
func levelText(c tensor.CPUCap) string {
	switch {
	case c.Warning != "":
		return fmt.Sprintf("%s (%s)", c.Active, c.Warning)
	case c.Env != "":
		return fmt.Sprintf("%s (capped by %s=%s; this CPU: %s)", c.Active, tensor.CPUEnv, c.Env, c.CPU)
	}
	return fmt.Sprintf("%s (this CPU's; %s=%s lowers it)", c.Active, tensor.CPUEnv, strings.Join(c.Levels, "|"))
}

// Write prints i as `carryon version` shows it.
func (i Info) Write(w io.Writer) error {
	cudaText := "not built (build with -tags cuda)"
	if i.CUDA {
		cudaText = "built in"
	}
	feats := strings.Join(i.Features, " ")
	if feats == "" {
		feats = "none detected"
	}
	_, err := fmt.Fprintf(w, "carryon %s\ncommit:   %s\ngo:       %s %s/%s\ncpu:      %s\nkernels:  %s\ngemm:     %s\nint8:     %s\ncuda:     %s\n",
		i.Version, i.Commit, i.GoVersion, i.OS, i.Arch, feats, i.Level, i.Kernel, i.Int8, cudaText)
	return err
}
