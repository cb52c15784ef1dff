package tensor

// The sigmoid family runs on the vectorised exp of exp.go: σ(x) =
// 1/(1 + e^−x) in float32, within a few ulp of the exact value; it
// saturates to 0 or 1 for large |x|.

// SigmoidForward computes out = σ(x) elementwise (the carry-on's gate);
// out may alias x.
//
//	out, x: (n)
func SigmoidForward(out, x []float32) {
	sigmoidInto(out, x, false)
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
	sigmoidInto(out, x, true)
}

// SiLUBackward accumulates dx += dout · σ(x)(1 + x(1 − σ(x))), from the
// forward's input.
//
//	dx, dout, x: (n)
func SiLUBackward(dx, dout, x []float32) {
	var sb [sigmoidChunk]float32
	for i0 := 0; i0 < len(dout); i0 += sigmoidChunk {
		xs := x[i0:min(i0+sigmoidChunk, len(dout))]
		sig := sb[:len(xs)]
		sigmoidInto(sig, xs, false)
		for j, v := range xs {
			s := sig[j]
			dx[i0+j] += dout[i0+j] * s * (1 + v*(1-s))
		}
	}
}
