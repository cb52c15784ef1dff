package tensor

// Vectorised exp for the softmax, cross-entropy, SwiGLU, SiLU and sigmoid
// kernels. On amd64 with AVX2+FMA, eight lanes at a time run the algorithm
// of expf32 (exp_amd64.s); elsewhere (and with -tags purego) the same
// expf32 runs per element. Both are within about 2 float32 ulp of the
// rounded exact value (exp_test.go sweeps them against math.Exp); they may
// differ from each other in the last bit where x·log2e rounds a tie
// (the vector rounds to even, expf32 away from zero). A tail of fewer than
// eight elements goes through the vector kernel on a padded copy, so every
// element of a slice gets the same arithmetic wherever it sits.

// expSubSum sets dst[i] = e^(src[i] − m) and returns Σ dst[i], added in
// float64. dst may alias src.
//
//	dst, src: (n)
func expSubSum(dst, src []float32, m float32) float64 {
	n := len(src)
	dst = dst[:n]
	if !expVector {
		var s float64
		for i, x := range src {
			e := expf32(x - m)
			dst[i] = e
			s += float64(e)
		}
		return s
	}
	n8 := n &^ 7
	var s float64
	if n8 > 0 {
		s = expSubSumVec(dst[:n8], src[:n8], m)
	}
	if n8 < n {
		var t [8]float32
		copy(t[:], src[n8:])
		expSubSumVec(t[:], t[:], m)
		for i, e := range t[:n-n8] {
			dst[n8+i] = e
			s += float64(e)
		}
	}
	return s
}

// swiglu sets out[i] = g/(1 + e^−g)·up[i] with g = gate[i]; out may alias
// gate or up.
//
//	out, gate, up: (n)
func swiglu(out, gate, up []float32) {
	n := len(gate)
	out, up = out[:n], up[:n]
	if !expVector {
		for i, g := range gate {
			out[i] = g / (1 + expf32(-g)) * up[i]
		}
		return
	}
	n8 := n &^ 7
	if n8 > 0 {
		swigluVec(out[:n8], gate[:n8], up[:n8])
	}
	if n8 < n {
		var g, u [8]float32
		copy(g[:], gate[n8:])
		copy(u[:], up[n8:])
		swigluVec(g[:], g[:], u[:])
		copy(out[n8:], g[:n-n8])
	}
}

// sigmoidInto sets out[i] = σ(x[i]) = 1/(1 + e^−x), or x·σ(x) (SiLU) when
// silu; out may alias x.
//
//	out, x: (n)
func sigmoidInto(out, x []float32, silu bool) {
	n := len(x)
	out = out[:n]
	if !expVector {
		for i, v := range x {
			s := 1 / (1 + expf32(-v))
			if silu {
				s *= v
			}
			out[i] = s
		}
		return
	}
	n8 := n &^ 7
	if n8 > 0 {
		sigmoidVec(out[:n8], x[:n8], silu)
	}
	if n8 < n {
		var t [8]float32
		copy(t[:], x[n8:])
		sigmoidVec(t[:], t[:], silu)
		copy(out[n8:], t[:n-n8])
	}
}

// maxOf returns the largest element of x (len(x) ≥ 1). With a NaN in x the
// result is unspecified (the loss it feeds is NaN either way).
func maxOf(x []float32) float32 {
	n8 := len(x) &^ 7
	m := x[0]
	if expVector && n8 > 0 {
		m = maxVec(x[:n8])
	} else {
		n8 = 0
	}
	for _, v := range x[n8:] {
		m = max(m, v)
	}
	return m
}

// scaleBy sets x[i] *= s (bitwise what the scalar loop gives).
func scaleBy(x []float32, s float32) {
	n8 := len(x) &^ 7
	if expVector && n8 > 0 {
		scaleVec(x[:n8], s)
	} else {
		n8 = 0
	}
	for i := n8; i < len(x); i++ {
		x[i] *= s
	}
}
