//go:build amd64 && !purego

package tensor

// AVX2+FMA kernels in exp_amd64.s; n is a multiple of 8.

//go:noescape
func expSubSumAVX2(dst, src *float32, n int, m float32) float64

//go:noescape
func swigluAVX2(out, gate, up *float32, n int)

//go:noescape
func sigmoidAVX2(out, x *float32, n int, silu bool)

//go:noescape
func maxAVX2(x *float32, n int) float32

//go:noescape
func scaleAVX2(x *float32, n int, s float32)

// expVector says whether the vector kernels run (tests turn it off to check
// the portable loops).
var expVector = hasAVX2

func expSubSumVec(dst, src []float32, m float32) float64 {
	return expSubSumAVX2(&dst[0], &src[0], len(src), m)
}

func swigluVec(out, gate, up []float32) { swigluAVX2(&out[0], &gate[0], &up[0], len(gate)) }

func sigmoidVec(out, x []float32, silu bool) { sigmoidAVX2(&out[0], &x[0], len(x), silu) }

func maxVec(x []float32) float32 { return maxAVX2(&x[0], len(x)) }

func scaleVec(x []float32, s float32) { scaleAVX2(&x[0], len(x), s) }
