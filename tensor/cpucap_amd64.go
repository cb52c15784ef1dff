//go:build amd64 && !purego

package tensor

import "golang.org/x/sys/cpu"

// cpuLevels are the kernel sets of CARRYON_CPU on amd64, lowest first:
// pure Go; AVX2+FMA (float32, and int8 by VPMADDUBSW); AVX-VNNI (VEX
// VPDPBUSD for int8); AVX-512 F (float32) with AVX512_VNNI (int8) where
// present; AVX512_BF16 (VDPBF16PS).
var cpuLevels = []string{"generic", "avx2", "avxvnni", "avx512", "avx512bf16"}

// cpuLevelHave is the index in cpuLevels of the highest level this CPU has.
var cpuLevelHave = func() int {
	x := cpu.X86
	switch {
	case !(x.HasAVX2 && x.HasFMA):
		return 0
	case x.HasAVX512F && x.HasAVX512BF16:
		return 4
	case x.HasAVX512F:
		return 3
	case x.HasAVXVNNI:
		return 2
	}
	return 1
}()
