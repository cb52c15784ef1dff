package tensor

import "math"

// sigmoid32 is σ(x) = 1/(1+e^−x), evaluated in float64 and rounded; it
// saturates cleanly to 0 or 1 for large |x|.
func sigmoid32(x float32) float32 {
	return float32(1 / (1 + math.Exp(-float64(x))))
}

// SigmoidForward computes out = σ(x) elementwise (the carry-on's gate);
// out may alias x.
//
//	out, x: (n)
func SigmoidForward(out, x []float32) {
	for i, v := range x {
		out[i] = sigmoid32(v)
	}
}

// SigmoidBackward accumulates dx += dout · out · (1 − out), from the
// forward's output.
//
//	dx, dout, out: (n)
func SigmoidBackward(dx, dout, out []float32) {
	for i, g := range dout {
		s := out[i]
		dx[i] += g * s * (1 - s)
	}
}

// SiLUForward computes out = x · σ(x) elementwise; out may alias x.
//
//	out, x: (n)
func SiLUForward(out, x []float32) {
	for i, v := range x {
		out[i] = v * sigmoid32(v)
	}
}

// SiLUBackward accumulates dx += dout · σ(x)(1 + x(1 − σ(x))), from the
// forward's input.
//
//	dx, dout, x: (n)
func SiLUBackward(dx, dout, x []float32) {
	for i, g := range dout {
		v := x[i]
		s := sigmoid32(v)
		dx[i] += g * s * (1 + v*(1-s))
	}
}
