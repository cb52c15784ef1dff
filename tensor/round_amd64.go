//go:build amd64 && !purego

package tensor

// roundBF16F32AVX2 is roundBF16F32Row's loop on n values (a multiple of 8)
// in AVX2 (round_amd64.s).
//
//go:noescape
func roundBF16F32AVX2(n int, dst, src *float32)

// roundBF16F32Vec rounds the longest multiple of 8 values at the start of
// src into dst with the AVX2 kernel, where the CPU has it, and returns how
// many it rounded (0 without it).
func roundBF16F32Vec(dst, src []float32) int {
	n := len(src) &^ 7
	if !hasAVX2 || n == 0 {
		return 0
	}
	_ = dst[n-1]
	roundBF16F32AVX2(n, &dst[0], &src[0])
	return n
}
