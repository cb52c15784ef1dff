package tensor

import "math"

// geluC is sqrt(2/π), the constant of GELU's tanh approximation.
const geluC = 0.7978845608028654

// GELUForward computes the tanh approximation of GELU (PyTorch's
// approximate="tanh", GPT-2's gelu_new), not the exact erf form:
//
//	out = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
//
// out may alias x.
//
//	out, x: (n)
func GELUForward(out, x []float32) {
	for i, v := range x {
		u := geluC * (float64(v) + 0.044715*float64(v)*float64(v)*float64(v))
		out[i] = float32(0.5 * float64(v) * (1 + math.Tanh(u)))
	}
}

// GELUBackward accumulates the gradient of GELUForward (the tanh
// approximation) from the forward's input:
//
//	dx += dout · (½(1 + tanh u) + ½·x·sech²u · √(2/π)(1 + 3·0.044715·x²))
//
//	dx, dout, x: (n)
func GELUBackward(dx, dout, x []float32) {
	for i, g := range dout {
		v := float64(x[i])
		u := geluC * (v + 0.044715*v*v*v)
		th := math.Tanh(u)
		sech2 := 1 - th*th
		local := 0.5*(1+th) + 0.5*v*sech2*geluC*(1+3*0.044715*v*v)
		dx[i] += g * float32(local)
	}
}
