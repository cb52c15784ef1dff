package tensor

import "math"

// SwiGLUForward computes out = silu(gate) ⊙ up.
//
//	out, gate, up: (n)
func SwiGLUForward(out, gate, up []float32) {
	for i, g := range gate {
		out[i] = g / (1 + float32(math.Exp(float64(-g)))) * up[i]
	}
}

// SwiGLUBackward accumulates the gradients of SwiGLUForward:
// dgate += dout·up·σ(g)(1 + g(1−σ(g))), dup += dout·silu(g).
//
//	dgate, dup: (n) += …, either may be nil
//	dout, gate, up: (n)
func SwiGLUBackward(dgate, dup, dout, gate, up []float32) {
	for i, g := range gate {
		s := 1 / (1 + float32(math.Exp(float64(-g))))
		if dgate != nil {
			dgate[i] += dout[i] * up[i] * s * (1 + g*(1-s))
		}
		if dup != nil {
			dup[i] += dout[i] * g * s
		}
	}
}
