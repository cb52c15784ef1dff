package tensor

import (
	"fmt"
	"math"
	"sort"
)

// 8-bit AdamW (bitsandbytes' blockwise 8-bit optimizer state, Dettmers et
// al. 2022): each moment is stored as one byte per value, an index into a
// 256-entry dynamic quantization map, plus one float32 absmax per block.
// A block is decoded, updated in float32 and re-encoded with its new
// absmax at every step, so the state takes 1 + 4/block bytes per value
// instead of 4 (m and v together: ≈ 2.03 instead of 8 bytes per
// parameter at block 256).

// AdamW8Block is the block size of the 8-bit moments (bitsandbytes'
// blockwise optimizers use 256 or 2048; 256 is the more accurate).
const AdamW8Block = 256

// dynamicMap is bitsandbytes' create_dynamic_map(signed, 7, 8): values of
// the form ±10^e·f, e in −6..0, with 2^i fractions for the decade i (an
// exponent spread like a float, a fraction like a linear code), plus 0 and
// 1, sorted. signed: 127 positive and 127 negative values (first moment);
// unsigned: 254 positive ones (second moment).
func dynamicMap(signed bool) [256]float32 {
	var data []float64
	for i := 0; i < 7; i++ {
		items := 1 << (i + 1)
		if signed {
			items = 1 << i
		}
		// linspace(0.1, 1, items+1) midpoints, as torch computes them in float32.
		bnd := make([]float32, items+1)
		for t := range bnd {
			bnd[t] = float32(0.1 + (1-0.1)*float64(t)/float64(items))
		}
		scale := math.Pow(10, float64(-6+i))
		for t := 0; t < items; t++ {
			mean := float64((bnd[t] + bnd[t+1]) / 2)
			data = append(data, float64(float32(scale*mean)))
			if signed {
				data = append(data, -float64(float32(scale*mean)))
			}
		}
	}
	data = append(data, 0, 1)
	sort.Float64s(data)
	var out [256]float32
	for i, v := range data {
		out[i] = float32(v)
	}
	return out
}

var (
	adamMapSigned   = dynamicMap(true)
	adamMapUnsigned = dynamicMap(false)
)

// quantizeNearest returns the index of the map value nearest to x (x in
// [−1, 1]; ties to the lower index).
func quantizeNearest(cm *[256]float32, x float32) byte {
	lo, hi := 0, 255
	for hi-lo > 1 { // cm[lo] ≤ x ≤ cm[hi] once narrowed
		mid := (lo + hi) / 2
		if cm[mid] <= x {
			lo = mid
		} else {
			hi = mid
		}
	}
	if x-cm[lo] <= cm[hi]-x {
		return byte(lo)
	}
	return byte(hi)
}

// AdamW8State is the 8-bit state of AdamW for n parameters.
type AdamW8State struct {
	M, V       []byte    // (n) codes into the signed / unsigned dynamic maps
	MMax, VMax []float32 // (ceil(n/AdamW8Block)) per-block absmax
}

// NewAdamW8State returns a zero state for n parameters.
func NewAdamW8State(n int) *AdamW8State {
	nb := (n + AdamW8Block - 1) / AdamW8Block
	s := &AdamW8State{M: make([]byte, n), V: make([]byte, n), MMax: make([]float32, nb), VMax: make([]float32, nb)}
	zm, zv := quantizeNearest(&adamMapSigned, 0), quantizeNearest(&adamMapUnsigned, 0)
	for i := range s.M {
		s.M[i], s.V[i] = zm, zv
	}
	return s
}

// Bytes is the size of the state in bytes.
func (s *AdamW8State) Bytes() int { return len(s.M) + len(s.V) + 4*len(s.MMax) + 4*len(s.VMax) }

// Decode writes the moments as float32 into m and v (tests and checkpoints).
func (s *AdamW8State) Decode(m, v []float32) {
	for i := range s.M {
		b := i / AdamW8Block
		m[i] = adamMapSigned[s.M[i]] * s.MMax[b]
		v[i] = adamMapUnsigned[s.V[i]] * s.VMax[b]
	}
}

// AdamW8Step is AdamWStep with the moments in st (blocks of AdamW8Block
// from the start of params): per block, decode m and v, apply the float32
// AdamW update (the same arithmetic as AdamWStep), and re-encode m and v
// with the block's new absmax. off is the index of params[0] within the
// state, a multiple of AdamW8Block, so that callers may split the work.
func AdamW8Step(params, grads []float32, st *AdamW8State, off int, step int, lr, beta1, beta2, eps, wd float32) {
	if step < 1 {
		panic("tensor.AdamW8Step: step must be >= 1")
	}
	if len(grads) != len(params) || off%AdamW8Block != 0 || off < 0 || off+len(params) > len(st.M) {
		panic(fmt.Sprintf("tensor.AdamW8Step: %d params, %d grads at offset %d do not fit a state of %d", len(params), len(grads), off, len(st.M)))
	}
	b1, b2 := float64(beta1), float64(beta2)
	bc1 := 1 - math.Pow(b1, float64(step))
	bc2 := math.Sqrt(1 - math.Pow(b2, float64(step)))
	stepSize := float64(lr) / bc1
	decay := 1 - float64(lr)*float64(wd)
	var mb, vb [AdamW8Block]float32
	for b0 := 0; b0 < len(params); b0 += AdamW8Block {
		n := min(AdamW8Block, len(params)-b0)
		blk := (off + b0) / AdamW8Block
		mq, vq := st.M[off+b0:off+b0+n], st.V[off+b0:off+b0+n]
		mmax, vmax := st.MMax[blk], st.VMax[blk]
		var newM, newV float32
		for i := 0; i < n; i++ {
			g := float64(grads[b0+i])
			mi := b1*float64(adamMapSigned[mq[i]]*mmax) + (1-b1)*g
			vi := b2*float64(adamMapUnsigned[vq[i]]*vmax) + (1-b2)*g*g
			mb[i], vb[i] = float32(mi), float32(vi)
			newM, newV = max(newM, abs32(mb[i])), max(newV, vb[i])
			p := float64(params[b0+i]) * decay
			params[b0+i] = float32(p - stepSize*mi/(math.Sqrt(vi)/bc2+float64(eps)))
		}
		st.MMax[blk], st.VMax[blk] = newM, newV
		var im, iv float32
		if newM > 0 {
			im = 1 / newM
		}
		if newV > 0 {
			iv = 1 / newV
		}
		for i := 0; i < n; i++ {
			mq[i] = quantizeNearest(&adamMapSigned, min(1, max(-1, mb[i]*im)))
			vq[i] = quantizeNearest(&adamMapUnsigned, min(1, vb[i]*iv))
		}
	}
}
