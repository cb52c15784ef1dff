package tensor

import (
	"fmt"
)

// Gemm computes C = alpha·op(A)·op(B) + beta·C, BLAS-style, row-major.
//
//	op(A): (m, k) — A is (m, k) with leading dimension lda, or (k, m) when transA
//	op(B): (k, n) — B is (k, n) with leading dimension ldb, or (n, k) when transB
//	C:     (m, n) with leading dimension ldc
//
// With beta == 0, C is overwritten (its old contents, even NaN, are ignored).
// With alpha == 0 or k == 0, A and B are not read.
//
// The work is cache-blocked (A and B are packed into panels, transposes are
// absorbed by the packing) and run by an assembly micro-kernel chosen for the
// CPU at start-up: AVX-512 (12×32 tile), AVX2+FMA (6×16 tile), or a pure-Go
// 2×4 kernel (always used on other architectures or with -tags purego).
// Large products are split over GOMAXPROCS goroutines. Products with m ≤ 8
// and transB (decode: a few tokens times an (n, k) weight) skip the packing
// and run as dot products that stream B once.
//
// All paths accumulate in float32 with FMA (the pure-Go path rounds after
// each multiply and add); results differ from a float64 reference by a few
// float32 ulps times √k (see gemm_test.go for the tolerances checked).
//
// Gemm panics if a dimension is negative, a leading dimension is too small,
// or a slice is too short for the shapes.
func Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int,
	b []float32, ldb int, beta float32, c []float32, ldc int) {
	gemmImpl(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// GemmBF16 computes C = A·Bᵀ for a bfloat16 weight B, overwriting C, so that
// bf16 checkpoints need not be widened in memory.
//
//	A: (m, k) float32, leading dimension lda
//	B: (n, k) bf16 bit patterns, leading dimension ldb (nn.Linear layout)
//	C: (m, n) float32, leading dimension ldc
//
// Every path computes the same numbers up to float32 summation order (the
// bf16 numerics of carryon, docs/performance.md):
//   - each element of A is rounded to bf16 (nearest even; a denormal to a
//     zero of its sign, NaN quieted: roundBF16Go, what VCVTNE2PS2BF16 does);
//   - each product of a rounded a and a bf16 b is exact in float32 (8 × 8
//     significant bits);
//   - the products are added in float32.
//
// Where the CPU has AVX512_BF16 and m > 8, A is rounded while it is packed
// and VDPBF16PS adds the pair products; otherwise (decode, AVX-512 F,
// AVX2+FMA, pure Go) A is rounded into a copy and multiplied with B widened
// exactly. The error against the unrounded A is that of rounding A to 8
// significant bits: at most 2⁻⁸ relative per product, typically
// ~2⁻⁹·√k·rms(a·b); against a float64 sum of the rounded products it is
// float32 summation error only (tensortest checks both). VDPBF16PS also
// reads a denormal b as zero, where the widening paths use its value: a
// difference below 2⁻¹²⁶·|a| per product.
func GemmBF16(m, n, k int, a []float32, lda int, b []uint16, ldb int, c []float32, ldc int) {
	gemmBF16Impl(m, n, k, a, lda, b, ldb, c, ldc)
}

// gemmImpl is the active kernel; tests swap it to run every implementation.
var gemmImpl = gemmBest.gemm

// gemmBF16Impl is the active bf16-weight kernel.
var gemmBF16Impl = gemmBest.gemmBF16

// checkGemm panics with a clear message when the shapes do not fit the slices.
func checkGemm(op string, transA, transB bool, m, n, k int, la, lda, lb, ldb, lc, ldc int) {
	if m < 0 || n < 0 || k < 0 {
		panic(fmt.Sprintf("%s: negative dimension m=%d n=%d k=%d", op, m, n, k))
	}
	need := func(name string, rows, cols, l, ld int) {
		if ld < max(1, cols) {
			panic(fmt.Sprintf("%s: ld%s=%d < %d", op, name, ld, cols))
		}
		if rows > 0 && cols > 0 && l < (rows-1)*ld+cols {
			panic(fmt.Sprintf("%s: len(%s)=%d too short for (%d, %d) with ld%s=%d", op, name, l, rows, cols, name, ld))
		}
	}
	if transA {
		need("a", k, m, la, lda)
	} else {
		need("a", m, k, la, lda)
	}
	if transB {
		need("b", n, k, lb, ldb)
	} else {
		need("b", k, n, lb, ldb)
	}
	need("c", m, n, lc, ldc)
}

// GemmKernel names the GEMM implementation this process uses, picked at
// start-up from what the CPU offers: "go" (portable), "avx2", "avx512",
// "avx512bf16" (amd64) or "neon" (arm64).
func GemmKernel() string { return gemmBest.name }
