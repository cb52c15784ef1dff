package transformer

import (
	"math"
	"math/rand/v2"
	"testing"

	"carryon/tensor"
)

func randSlice(rng *rand.Rand, n int, scale float64) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64() * scale)
	}
	return s
}

func testBlock(rng *rand.Rand, d Dims, bias bool) Block {
	D, Q, KV, F := d.Dim, d.QDim(), d.KVDim(), d.FFN
	b := Block{AttnNorm: randSlice(rng, D, 1), MLPNorm: randSlice(rng, D, 1),
		WQ: F32(randSlice(rng, Q*D, 0.3)), WK: F32(randSlice(rng, KV*D, 0.3)), WV: F32(randSlice(rng, KV*D, 0.3)),
		WO: F32(randSlice(rng, D*Q, 0.3)), Gate: F32(randSlice(rng, F*D, 0.3)), Up: F32(randSlice(rng, F*D, 0.3)),
		Down: F32(randSlice(rng, D*F, 0.3))}
	if bias {
		b.BQ, b.BK, b.BV = randSlice(rng, Q, 0.1), randSlice(rng, KV, 0.1), randSlice(rng, KV, 0.1)
	}
	return b
}

// testPass is two sequences of 5 and 3 rows.
// testCase draws, from a generator seeded with s1 and s2, a block of d
// with biases and the input of testPass's two sequences, and returns the
// generator for what else the test draws.
func testCase(s1, s2 uint64, d Dims) (*rand.Rand, Block, *Pass, []float32) {
	rng := rand.New(rand.NewPCG(s1, s2))
	b := testBlock(rng, d, true)
	p := testPass(d)
	return rng, b, p, randSlice(rng, p.N*d.Dim, 1)
}

func testPass(d Dims) *Pass {
	pos := []int32{0, 1, 2, 3, 4, 0, 1, 2}
	return &Pass{N: 8, Pos: pos, Seqs: []int{0, 5, 8}, Rope: tensor.NewRoPE(d.HeadDim, 8, 1e4, nil, false)}
}

// TestForwardPathsAgree checks that the three ways through Forward give the
// same bits: training (activations saved), inference in place (rows of the
// MLP in chunks or not), and a KV-cached pass fed one row at a time agrees
// with the full pass within float32 rounding.
func TestForwardPathsAgree(t *testing.T) {
	d := Dims{Dim: 16, Heads: 4, KVHeads: 2, HeadDim: 4, FFN: 24, NormEps: 1e-6}
	_, b, p, in := testCase(1, 2, d)

	train := make([]float32, len(in))
	b.Forward(d, p, in, train, nil, NewActs(d, p.N, 5))
	for _, rows := range []int{0, 3} {
		x := append([]float32(nil), in...)
		q := *p
		q.MLPRows = rows
		var s Scratch
		b.Forward(d, &q, x, x, &s, nil)
		for i := range x {
			if x[i] != train[i] {
				t.Fatalf("MLPRows %d: inference row value %d = %v, training %v", rows, i, x[i], train[i])
			}
		}
	}
	// The first sequence through a cache: a prefill of 2 rows, then steps.
	K, V := make([]float32, 5*d.KVDim()), make([]float32, 5*d.KVDim())
	var s Scratch
	for _, span := range [][2]int{{0, 2}, {2, 3}, {3, 4}, {4, 5}} {
		n := span[1] - span[0]
		x := append([]float32(nil), in[span[0]*d.Dim:span[1]*d.Dim]...)
		q := &Pass{N: n, Pos: p.Pos[span[0]:span[1]], Seqs: []int{0, n}, Rope: p.Rope, K: K, V: V, Start: span[0]}
		b.Forward(d, q, x, x, &s, nil)
		for i, v := range x {
			want := train[span[0]*d.Dim+i]
			if math.Abs(float64(v-want)) > 1e-5*(1+math.Abs(float64(want))) {
				t.Fatalf("cached rows %v: value %d = %v, full pass %v", span, i, v, want)
			}
		}
	}
}

// TestBackwardFD checks Block.Backward against central finite differences
// of L = Σ out·dout in float64 arithmetic's spirit (float32 forward, small
// shapes, relative tolerance), for the input and a few parameters, with
// GQA, biases and two sequences.
func TestBackwardFD(t *testing.T) {
	d := Dims{Dim: 8, Heads: 4, KVHeads: 2, HeadDim: 2, FFN: 12, NormEps: 1e-6}
	rng, b, p, in := testCase(3, 4, d)
	dout := randSlice(rng, p.N*d.Dim, 1)
	loss := func() float64 {
		out := make([]float32, len(in))
		b.Forward(d, p, in, out, nil, NewActs(d, p.N, 5))
		var l float64
		for i := range out {
			l += float64(out[i]) * float64(dout[i])
		}
		return l
	}
	a := NewActs(d, p.N, 5)
	out := make([]float32, len(in))
	b.Forward(d, p, in, out, nil, a)
	D, Q, KV, F := d.Dim, d.QDim(), d.KVDim(), d.FFN
	g := Block{AttnNorm: make([]float32, D), MLPNorm: make([]float32, D),
		WQ: F32(make([]float32, Q*D)), WK: F32(make([]float32, KV*D)), WV: F32(make([]float32, KV*D)),
		WO: F32(make([]float32, D*Q)), Gate: F32(make([]float32, F*D)), Up: F32(make([]float32, F*D)),
		Down: F32(make([]float32, D*F)), BQ: make([]float32, Q), BK: make([]float32, KV), BV: make([]float32, KV)}
	dx := append([]float32(nil), dout...)
	b.Backward(d, p, &g, in, a, dx, NewBackScratch(d, p.N))

	check := func(name string, param, grad []float32) {
		for _, i := range []int{0, len(param) / 3, len(param) - 1} {
			const h = 1e-2
			old := param[i]
			param[i] = old + h
			lp := loss()
			param[i] = old - h
			lm := loss()
			param[i] = old
			fd := (lp - lm) / (2 * h)
			if diff := math.Abs(fd - float64(grad[i])); diff > 2e-2*math.Max(1, math.Abs(fd)) {
				t.Errorf("%s[%d]: backward %v, finite difference %v", name, i, grad[i], fd)
			}
		}
	}
	check("in", in, dx)
	check("AttnNorm", b.AttnNorm, g.AttnNorm)
	check("MLPNorm", b.MLPNorm, g.MLPNorm)
	check("WQ", b.WQ.(F32), g.WQ.(F32))
	check("WK", b.WK.(F32), g.WK.(F32))
	check("WV", b.WV.(F32), g.WV.(F32))
	check("WO", b.WO.(F32), g.WO.(F32))
	check("BQ", b.BQ, g.BQ)
	check("BV", b.BV, g.BV)
	check("Gate", b.Gate.(F32), g.Gate.(F32))
	check("Up", b.Up.(F32), g.Up.(F32))
	check("Down", b.Down.(F32), g.Down.(F32))
}
