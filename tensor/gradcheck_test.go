package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The gradient check uses llm.c's fake-loss trick: draw a random dout and
// define L = Σ out·dout, so that dL/dinput is exactly what a backward pass
// returns when handed dout. Each case pairs our float32 forward and backward
// with an independent float64 reference of the forward written here; the
// analytic gradients are compared with central differences of L computed on
// that reference in float64, so neither our forward nor our backward is
// trusted. Every backward is also checked to ACCUMULATE: gradients are
// pre-filled with random values that are subtracted afterwards.

// gcTol is the bound on max|analytic − numeric| / max(max|numeric|, 1e-3)
// per gradient tensor. float32 kernels land around 1e-6..1e-5; a wrong term
// gives O(1).
const gcTol = 2e-4

// gcFwdTol bounds the forward's max abs error relative to max|ref|.
const gcFwdTol = 1e-5

type gcCase struct {
	name  string
	in    [][]float32 // inputs; a leaf with grad[i] false is not differentiated
	grad  []bool
	nOut  int
	fwd   func(in [][]float32, out []float32)
	bwd   func(in [][]float32, out, dout []float32, grads [][]float32) // grads[i] may be nil
	ref   func(in [][]float64) []float64
	check int // if > 0, check only this many random coordinates per input
}

func randSlice(rng *rand.Rand, n int, scale float64) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64() * scale)
	}
	return s
}

// randTargets draws n token ids below v.
func randTargets(rng *rand.Rand, n, v int) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(rng.IntN(v))
	}
	return t
}

func to64(s []float32) []float64 {
	if s == nil {
		return nil
	}
	d := make([]float64, len(s))
	for i, v := range s {
		d[i] = float64(v)
	}
	return d
}

func runGradCheck(t *testing.T, c gcCase) {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, uint64(len(c.name))))
	out := make([]float32, c.nOut)
	c.fwd(c.in, out)

	in64 := make([][]float64, len(c.in))
	for i, x := range c.in {
		in64[i] = to64(x)
	}
	want := c.ref(in64)
	if len(want) != c.nOut {
		t.Fatalf("reference returned %d outputs, want %d", len(want), c.nOut)
	}
	var maxRef, maxErr float64
	for i, w := range want {
		maxRef = max(maxRef, math.Abs(w))
		maxErr = max(maxErr, math.Abs(float64(out[i])-w))
	}
	if maxErr > gcFwdTol*max(maxRef, 1) {
		t.Errorf("forward: max abs err %.3g (max |ref| %.3g)", maxErr, maxRef)
	}

	dout := randSlice(rng, c.nOut, 1)
	dout64 := to64(dout)
	grads := make([][]float32, len(c.in))
	pre := make([][]float32, len(c.in))
	for i, x := range c.in {
		if c.grad[i] {
			pre[i] = randSlice(rng, len(x), 1)
			grads[i] = append([]float32(nil), pre[i]...)
		}
	}
	// A call with every gradient nil must be harmless.
	c.bwd(c.in, out, dout, make([][]float32, len(c.in)))
	c.bwd(c.in, out, dout, grads)

	loss := func() float64 {
		var l float64
		for i, o := range c.ref(in64) {
			l += o * dout64[i]
		}
		return l
	}
	for i := range c.in {
		if !c.grad[i] {
			continue
		}
		idx := make([]int, len(c.in[i]))
		for j := range idx {
			idx[j] = j
		}
		if c.check > 0 && c.check < len(idx) {
			rng.Shuffle(len(idx), func(a, b int) { idx[a], idx[b] = idx[b], idx[a] })
			idx = idx[:c.check]
		}
		var maxNum, maxDiff float64
		worst := -1
		for _, j := range idx {
			x0 := in64[i][j]
			h := 1e-5 * max(1, math.Abs(x0))
			in64[i][j] = x0 + h
			lp := loss()
			in64[i][j] = x0 - h
			lm := loss()
			in64[i][j] = x0
			num := (lp - lm) / (2 * h)
			got := float64(grads[i][j] - pre[i][j])
			maxNum = max(maxNum, math.Abs(num))
			if d := math.Abs(got - num); d > maxDiff {
				maxDiff, worst = d, j
			}
		}
		if rel := maxDiff / max(maxNum, 1e-3); rel > gcTol || math.IsNaN(rel) {
			t.Errorf("input %d: rel err %.3g > %.1g (worst index %d: max diff %.3g, max |numeric| %.3g)",
				i, rel, gcTol, worst, maxDiff, maxNum)
		}
	}
}

// ---- float64 references, written independently of the kernels ----

func refLinear(inp, w, b []float64, n, ic, oc int) []float64 {
	out := make([]float64, n*oc)
	for i := 0; i < n; i++ {
		for o := 0; o < oc; o++ {
			s := 0.0
			if b != nil {
				s = b[o]
			}
			for c := 0; c < ic; c++ {
				s += inp[i*ic+c] * w[o*ic+c]
			}
			out[i*oc+o] = s
		}
	}
	return out
}

func refRMSNorm(x, w []float64, n, d int, eps float64) []float64 {
	out := make([]float64, n*d)
	for i := 0; i < n; i++ {
		ms := 0.0
		for j := 0; j < d; j++ {
			ms += x[i*d+j] * x[i*d+j]
		}
		r := 1 / math.Sqrt(ms/float64(d)+eps)
		for j := 0; j < d; j++ {
			out[i*d+j] = x[i*d+j] * r * w[j]
		}
	}
	return out
}

// refRoPEFreqs recomputes the inverse frequencies, with Llama 3.1 scaling
// written from the published reference (apply_scaling in Meta's model.py).
func refRoPEFreqs(hd int, theta float64, sc *RoPEScaling) []float64 {
	f := make([]float64, hd/2)
	for i := range f {
		f[i] = math.Pow(theta, -float64(2*i)/float64(hd))
		if sc == nil {
			continue
		}
		lowWave := float64(sc.OriginalContext) / sc.LowFreqFactor
		highWave := float64(sc.OriginalContext) / sc.HighFreqFactor
		wl := 2 * math.Pi / f[i]
		if wl > lowWave {
			f[i] /= sc.Factor
		} else if wl >= highWave {
			smooth := (float64(sc.OriginalContext)/wl - sc.LowFreqFactor) / (sc.HighFreqFactor - sc.LowFreqFactor)
			f[i] = (1-smooth)*f[i]/sc.Factor + smooth*f[i]
		}
	}
	return f
}

func refRoPE(x []float64, pos []int32, n, nh, hd int, freqs []float64, interleaved bool) []float64 {
	out := append([]float64(nil), x...)
	for t := 0; t < n; t++ {
		for h := 0; h < nh; h++ {
			base := (t*nh + h) * hd
			for i := 0; i < hd/2; i++ {
				a, b := base+i, base+i+hd/2
				if interleaved {
					a, b = base+2*i, base+2*i+1
				}
				ang := float64(pos[t]) * freqs[i]
				out[a] = x[a]*math.Cos(ang) - x[b]*math.Sin(ang)
				out[b] = x[a]*math.Sin(ang) + x[b]*math.Cos(ang)
			}
		}
	}
	return out
}

// refAttention is the naive softmax(QKᵀ/√hd + causal mask)·V per head.
func refAttention(q, k, v []float64, T, nHead, nKV, hd int) []float64 {
	out := make([]float64, T*nHead*hd)
	sc := make([]float64, T)
	for h := 0; h < nHead; h++ {
		g := h / (nHead / nKV)
		for t := 0; t < T; t++ {
			mx := math.Inf(-1)
			for s := 0; s <= t; s++ {
				d := 0.0
				for i := 0; i < hd; i++ {
					d += q[(t*nHead+h)*hd+i] * k[(s*nKV+g)*hd+i]
				}
				sc[s] = d / math.Sqrt(float64(hd))
				mx = max(mx, sc[s])
			}
			sum := 0.0
			for s := 0; s <= t; s++ {
				sc[s] = math.Exp(sc[s] - mx)
				sum += sc[s]
			}
			for s := 0; s <= t; s++ {
				for i := 0; i < hd; i++ {
					out[(t*nHead+h)*hd+i] += sc[s] / sum * v[(s*nKV+g)*hd+i]
				}
			}
		}
	}
	return out
}

func sig64(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

func mapRef(f func(float64) float64) func(in [][]float64) []float64 {
	return func(in [][]float64) []float64 {
		out := make([]float64, len(in[0]))
		for i, x := range in[0] {
			out[i] = f(x)
		}
		return out
	}
}

func refSoftmax(x []float64, n, d int) []float64 {
	out := make([]float64, n*d)
	for i := 0; i < n; i++ {
		mx := math.Inf(-1)
		for j := 0; j < d; j++ {
			mx = max(mx, x[i*d+j])
		}
		s := 0.0
		for j := 0; j < d; j++ {
			out[i*d+j] = math.Exp(x[i*d+j] - mx)
			s += out[i*d+j]
		}
		for j := 0; j < d; j++ {
			out[i*d+j] /= s
		}
	}
	return out
}

// refXent returns the summed cross-entropy of logits = y·Wᵀ over counted
// positions, and their count.
func refXent(y, w []float64, targets []int32, T, D, V int) (float64, int) {
	logits := refLinear(y, w, nil, T, D, V)
	var loss float64
	n := 0
	for t := 0; t < T; t++ {
		if targets[t] < 0 {
			continue
		}
		row := logits[t*V : (t+1)*V]
		mx := math.Inf(-1)
		for _, z := range row {
			mx = max(mx, z)
		}
		s := 0.0
		for _, z := range row {
			s += math.Exp(z - mx)
		}
		loss += mx + math.Log(s) - row[targets[t]]
		n++
	}
	return loss, n
}

// ---- cases ----

func linearCase(rng *rand.Rand, bias bool) gcCase {
	n, ic, oc := 3, 5, 4
	in := [][]float32{randSlice(rng, n*ic, 1), randSlice(rng, oc*ic, 1), nil}
	if bias {
		in[2] = randSlice(rng, oc, 1)
	}
	return gcCase{
		name: fmt.Sprintf("linear/bias=%v", bias), in: in, grad: []bool{true, true, bias}, nOut: n * oc,
		fwd: func(in [][]float32, out []float32) { LinearForward(out, in[0], in[1], in[2], n, ic, oc) },
		bwd: func(in [][]float32, out, dout []float32, g [][]float32) {
			LinearBackward(g[0], g[1], g[2], dout, in[0], in[1], n, ic, oc)
		},
		ref: func(in [][]float64) []float64 { return refLinear(in[0], in[1], in[2], n, ic, oc) },
	}
}

func ropeCase(rng *rand.Rand, name string, interleaved bool, sc *RoPEScaling) gcCase {
	n, nh, hd := 4, 2, 8
	pos := []int32{5, 0, 31, 3}
	theta := 10000.0
	r := NewRoPE(hd, 32, theta, sc, interleaved)
	freqs := refRoPEFreqs(hd, theta, sc)
	return gcCase{
		name: name, in: [][]float32{randSlice(rng, n*nh*hd, 1)}, grad: []bool{true}, nOut: n * nh * hd,
		fwd: func(in [][]float32, out []float32) { copy(out, in[0]); r.Forward(out, pos, n, nh) },
		bwd: func(in [][]float32, out, dout []float32, g [][]float32) {
			if g[0] == nil {
				return
			}
			d := append([]float32(nil), dout...)
			r.Backward(d, pos, n, nh) // in place: no accumulation
			AddInPlace(g[0], d)
		},
		ref: func(in [][]float64) []float64 { return refRoPE(in[0], pos, n, nh, hd, freqs, interleaved) },
	}
}

func attentionCase(rng *rand.Rand, T, nHead, nKV, hd, check int) gcCase {
	lse := make([]float32, nHead*T)
	scratch := make([]float32, AttentionScratch(T, hd))
	return gcCase{
		name: fmt.Sprintf("attention/T=%d/h=%d/kv=%d/blocks=%dx%d", T, nHead, nKV, attnBlockQ, attnBlockK),
		in:   [][]float32{randSlice(rng, T*nHead*hd, 1), randSlice(rng, T*nKV*hd, 1), randSlice(rng, T*nKV*hd, 1)},
		grad: []bool{true, true, true}, nOut: T * nHead * hd, check: check,
		fwd: func(in [][]float32, out []float32) {
			AttentionForward(out, lse, in[0], in[1], in[2], scratch, T, nHead, nKV, hd)
		},
		bwd: func(in [][]float32, out, dout []float32, g [][]float32) {
			AttentionBackward(g[0], g[1], g[2], dout, in[0], in[1], in[2], out, lse, scratch, T, nHead, nKV, hd)
		},
		ref: func(in [][]float64) []float64 { return refAttention(in[0], in[1], in[2], T, nHead, nKV, hd) },
	}
}

func xentCase(rng *rand.Rand, T, D, V, chunk int, targets []int32, yScale float64) gcCase {
	var gradScale float32
	scratch := make([]float32, chunk*V)
	return gcCase{
		name: fmt.Sprintf("xent/T=%d/chunk=%d/yscale=%g", T, chunk, yScale),
		in:   [][]float32{randSlice(rng, T*D, yScale), randSlice(rng, V*D, 1)}, grad: []bool{true, false}, nOut: 2,
		fwd: func(in [][]float32, out []float32) {
			l, n := CrossEntropyLMHead(nil, in[0], in[1], targets, T, D, V, chunk, 0, scratch)
			out[0], out[1] = float32(l), float32(n)
		},
		bwd: func(in [][]float32, out, dout []float32, g [][]float32) {
			// L = dout[0]·loss + dout[1]·count: dy = dout[0]·dloss/dy.
			gradScale = dout[0]
			l, n := CrossEntropyLMHead(g[0], in[0], in[1], targets, T, D, V, chunk, gradScale, scratch)
			if float32(l) != out[0] || float32(n) != out[1] {
				panic("xent: loss differs between calls with and without dy")
			}
		},
		ref: func(in [][]float64) []float64 {
			l, n := refXent(in[0], in[1], targets, T, D, V)
			return []float64{l, float64(n)}
		},
	}
}

func gradCheckCases(rng *rand.Rand) []gcCase {
	elem := func(name string, n int, fwd func(out, x []float32), bwd func(dx, dout, x, out []float32), f func(float64) float64) gcCase {
		return gcCase{
			name: name, in: [][]float32{randSlice(rng, n, 2)}, grad: []bool{true}, nOut: n,
			fwd: func(in [][]float32, out []float32) { fwd(out, in[0]) },
			bwd: func(in [][]float32, out, dout []float32, g [][]float32) {
				if g[0] != nil {
					bwd(g[0], dout, in[0], out)
				}
			},
			ref: mapRef(f),
		}
	}
	rmsN, rmsD := 3, 7
	rstd := make([]float32, rmsN)
	smN, smD := 3, 5
	embV, embD := 5, 3
	ids := []int32{1, 3, 1, 0, 4, 1}
	swN := 9
	llama3 := &RoPEScaling{Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalContext: 1024}

	cases := []gcCase{
		linearCase(rng, true),
		linearCase(rng, false),
		{
			name: "rmsnorm", in: [][]float32{randSlice(rng, rmsN*rmsD, 1), randSlice(rng, rmsD, 1)},
			grad: []bool{true, true}, nOut: rmsN * rmsD,
			fwd: func(in [][]float32, out []float32) { RMSNormForward(out, rstd, in[0], in[1], rmsN, rmsD, 1e-5) },
			bwd: func(in [][]float32, out, dout []float32, g [][]float32) {
				RMSNormBackward(g[0], g[1], dout, in[0], in[1], rstd, rmsN, rmsD)
			},
			ref: func(in [][]float64) []float64 { return refRMSNorm(in[0], in[1], rmsN, rmsD, 1e-5) },
		},
		ropeCase(rng, "rope/rotate-half", false, nil),
		ropeCase(rng, "rope/interleaved", true, nil),
		ropeCase(rng, "rope/rotate-half/llama3", false, llama3),
		ropeCase(rng, "rope/interleaved/llama3", true, llama3),
		attentionCase(rng, 1, 4, 2, 8, 0),
		attentionCase(rng, 7, 4, 2, 8, 0),
		attentionCase(rng, 5, 2, 2, 4, 0),
		{
			name: "swiglu", in: [][]float32{randSlice(rng, swN, 2), randSlice(rng, swN, 1)},
			grad: []bool{true, true}, nOut: swN,
			fwd: func(in [][]float32, out []float32) { SwiGLUForward(out, in[0], in[1]) },
			bwd: func(in [][]float32, out, dout []float32, g [][]float32) {
				SwiGLUBackward(g[0], g[1], dout, in[0], in[1])
			},
			ref: func(in [][]float64) []float64 {
				out := make([]float64, swN)
				for i, x := range in[0] {
					out[i] = x * sig64(x) * in[1][i]
				}
				return out
			},
		},
		{
			name: "embedding", in: [][]float32{randSlice(rng, embV*embD, 1)}, grad: []bool{true}, nOut: len(ids) * embD,
			fwd: func(in [][]float32, out []float32) { EmbeddingForward(out, in[0], ids, embD) },
			bwd: func(in [][]float32, out, dout []float32, g [][]float32) {
				if g[0] != nil {
					EmbeddingBackward(g[0], dout, ids, embD)
				}
			},
			ref: func(in [][]float64) []float64 {
				var out []float64
				for _, id := range ids {
					out = append(out, in[0][int(id)*embD:int(id+1)*embD]...)
				}
				return out
			},
		},
		elem("sigmoid", 11, SigmoidForward, func(dx, dout, x, out []float32) { SigmoidBackward(dx, dout, out) }, sig64),
		elem("silu", 11, SiLUForward, func(dx, dout, x, out []float32) { SiLUBackward(dx, dout, x) },
			func(x float64) float64 { return x * sig64(x) }),
		elem("gelu-tanh", 11, GELUForward, func(dx, dout, x, out []float32) { GELUBackward(dx, dout, x) },
			func(x float64) float64 {
				return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
			}),
		elem("scale", 6, func(out, x []float32) { copy(out, x); Scale(out, 1.7) },
			func(dx, dout, x, out []float32) { ScaleBackward(dx, dout, 1.7) },
			func(x float64) float64 { return float64(float32(1.7)) * x }),
		{
			name: "softmax", in: [][]float32{randSlice(rng, smN*smD, 2)}, grad: []bool{true}, nOut: smN * smD,
			fwd: func(in [][]float32, out []float32) { SoftmaxForward(out, in[0], smN, smD) },
			bwd: func(in [][]float32, out, dout []float32, g [][]float32) {
				if g[0] != nil {
					SoftmaxBackward(g[0], dout, out, smN, smD)
				}
			},
			ref: func(in [][]float64) []float64 { return refSoftmax(in[0], smN, smD) },
		},
		{
			name: "mul", in: [][]float32{randSlice(rng, 6, 1), randSlice(rng, 6, 1)}, grad: []bool{true, true}, nOut: 6,
			fwd: func(in [][]float32, out []float32) { MulForward(out, in[0], in[1]) },
			bwd: func(in [][]float32, out, dout []float32, g [][]float32) { MulBackward(g[0], g[1], dout, in[0], in[1]) },
			ref: func(in [][]float64) []float64 {
				out := make([]float64, 6)
				for i := range out {
					out[i] = in[0][i] * in[1][i]
				}
				return out
			},
		},
		{
			name: "add", in: [][]float32{randSlice(rng, 6, 1), randSlice(rng, 6, 1)}, grad: []bool{true, true}, nOut: 6,
			fwd: func(in [][]float32, out []float32) { Add(out, in[0], in[1]) },
			bwd: func(in [][]float32, out, dout []float32, g [][]float32) { AddBackward(g[0], g[1], dout) },
			ref: func(in [][]float64) []float64 {
				out := make([]float64, 6)
				for i := range out {
					out[i] = in[0][i] + in[1][i]
				}
				return out
			},
		},
		xentCase(rng, 7, 5, 11, 3, []int32{2, -1, 10, 0, 4, -1, 7}, 1),
		xentCase(rng, 7, 5, 11, 2, []int32{-1, 3, 3, 9, 1, 6, -1}, 1),
		xentCase(rng, 5, 4, 9, 8, []int32{1, 2, 3, 4, 5}, 1),
	}
	return cases
}

func TestGradCheck(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range gradCheckCases(rng) {
		t.Run(c.name, func(t *testing.T) { runGradCheck(t, c) })
	}
}

// TestGradCheckAttentionBlocks shrinks the block sizes below T (and to sizes
// T is not a multiple of) so that the online softmax crosses block
// boundaries, with and without goroutines.
func TestGradCheckAttentionBlocks(t *testing.T) {
	defer func(q, k int) { attnBlockQ, attnBlockK = q, k }(attnBlockQ, attnBlockK)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, b := range [][2]int{{3, 4}, {4, 3}, {2, 2}} {
		attnBlockQ, attnBlockK = b[0], b[1]
		for _, T := range []int{1, 7, 11} {
			c := attentionCase(rng, T, 4, 2, 8, 0)
			t.Run(c.name, func(t *testing.T) { runGradCheck(t, c) })
		}
	}
	// Default blocks, T across two of them, parallel path: check a random
	// sample of coordinates.
	attnBlockQ, attnBlockK = 128, 128
	c := attentionCase(rng, 260, 4, 2, 16, 40)
	t.Run(c.name, func(t *testing.T) { runGradCheck(t, c) })
}
