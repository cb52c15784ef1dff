//go:build !(amd64 || arm64) || purego

package tensor

// cpuLevels are the kernel sets of CARRYON_CPU in this build: pure Go only.
var cpuLevels = []string{"generic"}

const cpuLevelHave = 0
