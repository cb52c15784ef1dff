package tensor

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// CPUEnv names the environment variable that caps the kernel set: one of
// the levels of KernelCap().Levels (on amd64: generic, avx2, avxvnni,
// avx512, avx512bf16). It can only lower what the CPU has; it is read once,
// when the program starts. Use it to work around a CPU problem or to
// measure a lower level's kernels on a better CPU.
const CPUEnv = "CARRYON_CPU"

// CPUCap describes the kernel level in use.
type CPUCap struct {
	Active  string   // the level the kernels may use
	CPU     string   // the highest level this CPU has
	Env     string   // the value of CARRYON_CPU ("" when unset)
	Warning string   // why Env was not taken as is ("" when it was or is unset)
	Levels  []string // the levels of this build, lowest first
}

// KernelCap reports the kernel level chosen at start-up.
func KernelCap() CPUCap {
	c := cpuCap
	c.Levels = slices.Clone(cpuLevels)
	return c
}

// cpuCap is the level the kernels may use: the CPU's, or lower where
// CARRYON_CPU asks for it. Every has* flag of the kernels depends on it.
// A value it cannot take is reported once on standard error.
var cpuCap = func() CPUCap {
	c := parseCPUCap(os.Getenv(CPUEnv), cpuLevels, cpuLevelHave)
	if c.Warning != "" {
		fmt.Fprintln(os.Stderr, "carryon: tensor: "+c.Warning)
	}
	return c
}()

// capAllows reports whether the active level is at least the named one.
func capAllows(level string) bool {
	return slices.Index(cpuLevels, cpuCap.Active) >= slices.Index(cpuLevels, level)
}

// parseCPUCap returns the cap for the value env of CARRYON_CPU on a CPU of
// level have (an index into levels). A value it cannot take (unknown, or
// above the CPU) leaves the CPU's level and says why in Warning.
func parseCPUCap(env string, levels []string, have int) CPUCap {
	c := CPUCap{Active: levels[have], CPU: levels[have], Env: env}
	v := strings.ToLower(strings.TrimSpace(env))
	if v == "go" {
		v = "generic"
	}
	switch i := slices.Index(levels, v); {
	case v == "":
	case i < 0:
		c.Warning = fmt.Sprintf("%s=%s is not one of %s; using this CPU's %s",
			CPUEnv, env, strings.Join(levels, ", "), levels[have])
	case i > have:
		c.Warning = fmt.Sprintf("%s=%s asks for more than this CPU has (%s); using %s",
			CPUEnv, env, levels[have], levels[have])
	default:
		c.Active = levels[i]
	}
	return c
}
