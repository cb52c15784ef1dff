package tensor

import "math"

// RoPEScaling describes Llama 3.1-style frequency scaling ("rope_type":
// "llama3" in config.json). A zero Factor means no scaling.
type RoPEScaling struct {
	Factor          float64 // e.g. 32
	LowFreqFactor   float64 // e.g. 1
	HighFreqFactor  float64 // e.g. 4
	OriginalContext int     // original_max_position_embeddings, e.g. 8192
}

// RoPE holds rotary position tables for one head size.
//
// Layout: HF "rotate half" (the default) pairs dimension i with i+headDim/2;
// Interleaved pairs 2i with 2i+1 (Meta/llama2.c layout).
type RoPE struct {
	HeadDim     int
	MaxPos      int
	Interleaved bool
	cos, sin    []float32 // (MaxPos, HeadDim/2)
}

// NewRoPE builds tables for positions [0, maxPos).
func NewRoPE(headDim, maxPos int, theta float64, scaling *RoPEScaling, interleaved bool) *RoPE {
	half := headDim / 2
	r := &RoPE{HeadDim: headDim, MaxPos: maxPos, Interleaved: interleaved,
		cos: make([]float32, maxPos*half), sin: make([]float32, maxPos*half)}
	freqs := make([]float64, half)
	for i := range freqs {
		freqs[i] = 1 / math.Pow(theta, float64(2*i)/float64(headDim))
	}
	if scaling != nil && scaling.Factor != 0 {
		scaleLlama3(freqs, scaling)
	}
	for p := 0; p < maxPos; p++ {
		for i, f := range freqs {
			s, c := math.Sincos(float64(p) * f)
			r.cos[p*half+i] = float32(c)
			r.sin[p*half+i] = float32(s)
		}
	}
	return r
}

// scaleLlama3 applies Llama 3.1's piecewise frequency scaling in place.
func scaleLlama3(freqs []float64, s *RoPEScaling) {
	oc := float64(s.OriginalContext)
	lowWave := oc / s.LowFreqFactor
	highWave := oc / s.HighFreqFactor
	for i, f := range freqs {
		wave := 2 * math.Pi / f
		switch {
		case wave < highWave:
		case wave > lowWave:
			freqs[i] = f / s.Factor
		default:
			smooth := (oc/wave - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
			freqs[i] = (1-smooth)*f/s.Factor + smooth*f
		}
	}
}

// Forward rotates x in place.
//
//	x:   (n, nHeads·HeadDim)
//	pos: (n) position of each row, each < MaxPos
func (r *RoPE) Forward(x []float32, pos []int32, n, nHeads int) {
	r.rotate(x, pos, n, nHeads, 1)
}

// Backward turns d, the gradient with respect to Forward's output, into the
// gradient with respect to its input, IN PLACE, by rotating it back (the
// rotation is orthogonal, so its transpose is its inverse). It is the one
// backward in this package that does not accumulate: callers that need
// accumulation rotate a copy and add it.
//
//	d:   (n, nHeads·HeadDim)
//	pos: (n) the positions given to Forward
func (r *RoPE) Backward(d []float32, pos []int32, n, nHeads int) {
	r.rotate(d, pos, n, nHeads, -1)
}

// rotate applies the rotation by sign·angle (sign -1 is the inverse, which
// is also the backward pass since the rotation is orthogonal).
func (r *RoPE) rotate(x []float32, pos []int32, n, nHeads int, sign float32) {
	hd := r.HeadDim
	half := hd / 2
	for t := 0; t < n; t++ {
		cs := r.cos[int(pos[t])*half : int(pos[t])*half+half]
		sn := r.sin[int(pos[t])*half : int(pos[t])*half+half]
		for h := 0; h < nHeads; h++ {
			v := x[(t*nHeads+h)*hd : (t*nHeads+h+1)*hd]
			for i := 0; i < half; i++ {
				var a, b *float32
				if r.Interleaved {
					a, b = &v[2*i], &v[2*i+1]
				} else {
					a, b = &v[i], &v[i+half]
				}
				c, s := cs[i], sign*sn[i]
				x0, x1 := *a, *b
				*a = x0*c - x1*s
				*b = x0*s + x1*c
			}
		}
	}
}
