package tensor

// Add computes out = a + b elementwise; out may alias a or b.
func Add(out, a, b []float32) {
	for i := range out {
		out[i] = a[i] + b[i]
	}
}

// AddInPlace computes dst += src.
func AddInPlace(dst, src []float32) {
	if !chunked(len(src), 1) {
		addInPlace(dst, src)
		return
	}
	forChunks(len(src), 1, func(i0, i1 int) { addInPlace(dst[i0:i1], src[i0:i1]) })
}

func addInPlace(dst, src []float32) {
	for i, v := range src {
		dst[i] += v
	}
}

// Scale computes x *= s.
func Scale(x []float32, s float32) {
	for i := range x {
		x[i] *= s
	}
}

// AddBackward accumulates the gradients of out = a + b: da += dout,
// db += dout (either may be nil).
func AddBackward(da, db, dout []float32) {
	if da != nil {
		AddInPlace(da, dout)
	}
	if db != nil {
		AddInPlace(db, dout)
	}
}

// ScaleBackward accumulates the gradient of out = s·x: dx += s·dout.
func ScaleBackward(dx, dout []float32, s float32) {
	for i, g := range dout {
		dx[i] += s * g
	}
}

// MulForward computes the elementwise product out = a ⊙ b (e.g. the gate
// g ⊙ Δx); out may alias a or b.
//
//	out, a, b: (n)
func MulForward(out, a, b []float32) {
	for i := range out {
		out[i] = a[i] * b[i]
	}
}

// MulBackward accumulates the gradients of MulForward: da += dout ⊙ b,
// db += dout ⊙ a (either may be nil).
//
//	da, db, dout, a, b: (n)
func MulBackward(da, db, dout, a, b []float32) {
	if da != nil {
		for i, g := range dout {
			da[i] += g * b[i]
		}
	}
	if db != nil {
		for i, g := range dout {
			db[i] += g * a[i]
		}
	}
}
