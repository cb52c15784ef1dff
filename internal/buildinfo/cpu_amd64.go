package buildinfo

import "golang.org/x/sys/cpu"

func cpuFeatures() []string {
	return present(map[string]bool{
		"sse4.2": cpu.X86.HasSSE42, "avx": cpu.X86.HasAVX, "avx2": cpu.X86.HasAVX2, "fma": cpu.X86.HasFMA,
		"f16c": cpu.X86.HasF16C, "avx512f": cpu.X86.HasAVX512F, "avx512bw": cpu.X86.HasAVX512BW,
		"avx512vnni": cpu.X86.HasAVX512VNNI, "avx512bf16": cpu.X86.HasAVX512BF16, "avxvnni": cpu.X86.HasAVXVNNI,
	})
}
