//go:build amd64 && !purego

package tensor

// roundBF16AVX512 (gemm_amd64.s) rounds n float32s of x to bf16 into y, n a
// multiple of 32; roundBF16Go is its model.
//
//go:noescape
func roundBF16AVX512(n int, x *float32, y *uint16)

// roundBF16Row sets dst[i] = roundBF16Go(src[i]) for i < len(src).
func roundBF16Row(dst []uint16, src []float32) {
	n := len(src) &^ 31
	if hasBF16 && n > 0 {
		_ = dst[n-1]
		roundBF16AVX512(n, &src[0], &dst[0])
		dst, src = dst[n:], src[n:]
	}
	roundBF16RowGo(dst, src)
}
