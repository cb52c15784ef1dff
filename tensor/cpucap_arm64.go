//go:build arm64 && !purego

package tensor

import "golang.org/x/sys/cpu"

// cpuLevels are the kernel sets of CARRYON_CPU on arm64, lowest first.
var cpuLevels = []string{"generic", "neon"}

// cpuLevelHave is the index in cpuLevels of the highest level this CPU has.
var cpuLevelHave = func() int {
	if cpu.ARM64.HasASIMD {
		return 1
	}
	return 0
}()
