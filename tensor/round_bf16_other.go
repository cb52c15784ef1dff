//go:build !amd64 || purego

package tensor

// roundBF16Row sets dst[i] = roundBF16Go(src[i]) for i < len(src).
func roundBF16Row(dst []uint16, src []float32) { roundBF16RowGo(dst, src) }
