//go:build amd64 && !purego

package tensor

import "testing"

// TestRoundBF16F32VecUsed checks that TestRoundBF16F32Row exercises the
// AVX2 kernel where the kernels may use AVX2 (it would otherwise compare
// the Go loop with itself).
func TestRoundBF16F32VecUsed(t *testing.T) {
	if n := roundBF16F32Vec(make([]float32, 17), make([]float32, 17)); hasAVX2 != (n == 16) {
		t.Fatalf("hasAVX2 %v, but the vector kernel rounded %d of 17 values", hasAVX2, n)
	}
}
