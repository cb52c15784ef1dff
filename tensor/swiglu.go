package tensor

// SwiGLUForward computes out = silu(gate) ⊙ up, with the vectorised exp of
// exp.go (within about 2 float32 ulp of e^−g); out may alias gate or up.
//
//	out, gate, up: (n)
func SwiGLUForward(out, gate, up []float32) {
	if !chunked(len(gate), 1) {
		swiglu(out, gate, up)
		return
	}
	forChunks(len(gate), 1, func(i0, i1 int) { swiglu(out[i0:i1], gate[i0:i1], up[i0:i1]) })
}

// sigmoidChunk is how many σ values the backward passes compute at a time
// into a stack buffer before using them.
const sigmoidChunk = 256

// SwiGLUBackward accumulates the gradients of SwiGLUForward:
// dgate += dout·up·σ(g)(1 + g(1−σ(g))), dup += dout·silu(g).
//
//	dgate, dup: (n) += …, either may be nil
//	dout, gate, up: (n)
func SwiGLUBackward(dgate, dup, dout, gate, up []float32) {
	var sb [sigmoidChunk]float32
	for i0 := 0; i0 < len(gate); i0 += sigmoidChunk {
		gs := gate[i0:min(i0+sigmoidChunk, len(gate))]
		sig := sb[:len(gs)]
		sigmoidInto(sig, gs, false)
		for j, g := range gs {
			i := i0 + j
			s := sig[j]
			if dgate != nil {
				dgate[i] += dout[i] * up[i] * s * (1 + g*(1-s))
			}
			if dup != nil {
				dup[i] += dout[i] * g * s
			}
		}
	}
}
