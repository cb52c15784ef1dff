// Package tensortest is the one test suite every tensor.Backend passes:
// each op on random inputs against this package's reference (tensor's
// CPU functions, or float64 where the CPU kernel itself is under test),
// with the tolerances of Tolerances. tensor's own tests run it for every
// CPU kernel set (pure Go, AVX2, AVX-512 where present); cuda/'s tagged
// tests run it on the GPU.
package tensortest

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"carryon/tensor"
)

// Tolerances bound max|got − want| / max(1, max|want|) per op family.
// Zero fields take DefaultTolerances' values.
type Tolerances struct {
	GemmF32   float64 // float32 accumulation vs a float64 reference
	GemmBF16  float64 // bf16 B: float32 accumulation vs float64 on A rounded to bf16 (tensor.GemmBF16's numerics)
	Norm      float64 // RMSNorm forward
	NormBack  float64 // RMSNorm backward
	Rope      float64
	Attention float64 // forward vs tensor.AttentionForward
	AttnBack  float64 // backward vs tensor.AttentionBackward
	Pointwise float64 // SwiGLU, sigmoid, mul (exp within a few ulp)
	Xent      float64 // SoftmaxXent gradient and loss
	AdamW     float64 // float64 arithmetic both sides
	SumSq     float64 // relative
}

// DefaultTolerances are the bounds a backend with float32 accumulation
// (the CPU, cuBLAS without TF32, the CUDA kernels) meets.
var DefaultTolerances = Tolerances{
	GemmF32: 2e-5, GemmBF16: 2e-5, Norm: 2e-6, NormBack: 2e-5, Rope: 2e-6,
	Attention: 2e-5, AttnBack: 1e-4, Pointwise: 2e-6, Xent: 2e-6, AdamW: 1e-6, SumSq: 1e-12,
}

func (t Tolerances) fill() Tolerances {
	d := DefaultTolerances
	for _, p := range []struct{ v, def *float64 }{{&t.GemmF32, &d.GemmF32}, {&t.GemmBF16, &d.GemmBF16},
		{&t.Norm, &d.Norm}, {&t.NormBack, &d.NormBack}, {&t.Rope, &d.Rope}, {&t.Attention, &d.Attention},
		{&t.AttnBack, &d.AttnBack}, {&t.Pointwise, &d.Pointwise}, {&t.Xent, &d.Xent}, {&t.AdamW, &d.AdamW},
		{&t.SumSq, &d.SumSq}} {
		if *p.v == 0 {
			*p.v = *p.def
		}
	}
	return t
}

// RunBackend runs every op of b against the reference as a subtest.
func RunBackend(t *testing.T, b tensor.Backend, tol Tolerances) {
	tol = tol.fill()
	s := &suite{b: b, tol: tol, rng: rand.New(rand.NewPCG(1, 2))}
	t.Run("Buffers", s.buffers)
	t.Run("GemmF32", s.gemmF32)
	t.Run("GemmBF16", s.gemmBF16)
	t.Run("Embedding", s.embedding)
	t.Run("RMSNorm", s.rmsnorm)
	t.Run("RoPE", s.rope)
	t.Run("Attention", s.attention)
	t.Run("Pointwise", s.pointwise)
	t.Run("SoftmaxXent", s.xent)
	t.Run("AdamW", s.adamw)
	t.Run("SumSquares", s.sumsq)
	t.Run("Encode", s.encode)
}

type suite struct {
	b   tensor.Backend
	tol Tolerances
	rng *rand.Rand
	t   *testing.T
}

func (s *suite) rand(n int, scale float32) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = (2*s.rng.Float32() - 1) * scale
	}
	return x
}

// up allocates and uploads x (F32); the test frees it at cleanup.
func (s *suite) up(t *testing.T, x []float32) tensor.Buf {
	t.Helper()
	b := s.alloc(t, tensor.F32, len(x))
	s.b.UploadF32(b, x)
	return b
}

func (s *suite) upI32(t *testing.T, x []int32) tensor.Buf {
	t.Helper()
	b := s.alloc(t, tensor.I32, len(x))
	s.b.UploadI32(b, x)
	return b
}

func (s *suite) alloc(t *testing.T, dt tensor.DType, n int) tensor.Buf {
	t.Helper()
	b, err := s.b.Alloc(dt, n)
	if err != nil {
		t.Fatalf("Alloc(%v, %d): %v", dt, n, err)
	}
	t.Cleanup(func() { s.b.Free(b) })
	return b
}

func (s *suite) down(t *testing.T, b tensor.Buf) []float32 {
	t.Helper()
	out := make([]float32, b.Len())
	s.b.DownloadF32(out, b)
	if err := s.b.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return out
}

// check fails t when max|got − want| > tol·max(1, max|want|).
func check(t *testing.T, name string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", name, len(got), len(want))
	}
	var worst, mw float64
	wi := -1
	for i := range want {
		mw = math.Max(mw, math.Abs(float64(want[i])))
		d := math.Abs(float64(got[i]) - float64(want[i]))
		if d > worst || d != d {
			worst, wi = d, i
		}
	}
	if bound := tol * math.Max(1, mw); worst > bound || worst != worst {
		t.Errorf("%s: max |got−want| = %.3g at %d (got %v, want %v) > %.3g", name, worst, wi, got[wi], want[wi], bound)
	}
}

func (s *suite) buffers(t *testing.T) {
	x := s.rand(1000, 1)
	b := s.up(t, x)
	check(t, "roundtrip", s.down(t, b), x, 0)
	v := s.b.View(b, 100, 50)
	if v.Len() != 50 || v.DType() != tensor.F32 {
		t.Fatalf("View: len %d dtype %v", v.Len(), v.DType())
	}
	check(t, "view", s.down(t, v), x[100:150], 0)
	s.b.Zero(v)
	want := append([]float32(nil), x...)
	clear(want[100:150])
	check(t, "zero view", s.down(t, b), want, 0)
	s.b.Scale(b, 2)
	s.b.AddInPlace(b, s.up(t, x))
	for i := range want {
		want[i] = 2*want[i] + x[i]
	}
	check(t, "scale+add", s.down(t, b), want, 0)
}

// gemmRef is C = alpha·op(A)·op(B) + beta·C in float64.
func gemmRef(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) []float32 {
	out := append([]float32(nil), c...)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var acc float64
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				acc += float64(av) * float64(bv)
			}
			out[i*ldc+j] = float32(float64(alpha)*acc + float64(beta)*float64(c[i*ldc+j]))
		}
	}
	return out
}

func (s *suite) gemmF32(t *testing.T) {
	for _, sh := range []struct {
		m, n, k        int
		transA, transB bool
		alpha, beta    float32
	}{{1, 7, 5, false, true, 1, 0}, {37, 70, 129, false, true, 1, 0}, {64, 33, 17, false, false, 0.5, 1},
		{20, 48, 96, true, false, 1, 1}, {9, 16, 300, true, true, -1, 0.25}} {
		name := fmt.Sprintf("%dx%dx%d/tA=%t/tB=%t", sh.m, sh.n, sh.k, sh.transA, sh.transB)
		a, bm, c := s.rand(sh.m*sh.k, 1), s.rand(sh.k*sh.n, 1), s.rand(sh.m*sh.n, 1)
		lda, ldb := sh.k, sh.n
		if sh.transA {
			lda = sh.m
		}
		if sh.transB {
			ldb = sh.k
		}
		want := gemmRef(sh.transA, sh.transB, sh.m, sh.n, sh.k, sh.alpha, a, lda, bm, ldb, sh.beta, c, sh.n)
		cb := s.up(t, c)
		s.b.Gemm(sh.transA, sh.transB, sh.m, sh.n, sh.k, sh.alpha, s.up(t, a), lda, s.up(t, bm), ldb, sh.beta, cb, sh.n)
		check(t, name, s.down(t, cb), want, s.tol.GemmF32*math.Sqrt(float64(sh.k)))
	}
}

// gemmBF16 checks a bf16 B against tensor.GemmBF16's numerics, for every
// row count (decode included): A rounded to bf16 (nearest even, a denormal
// to zero), the products exact, float32 accumulation. The reference is a
// float64 sum over the rounded A; the result must also be measurably off
// the unrounded product (a backend that skips the rounding fails).
func (s *suite) gemmBF16(t *testing.T) {
	for _, sh := range [][3]int{{1, 40, 64}, {8, 33, 96}, {9, 40, 131}, {37, 70, 130}, {128, 96, 256}} {
		m, n, k := sh[0], sh[1], sh[2]
		a, w := s.rand(m*k, 1), s.rand(n*k, 1)
		ar := make([]float32, len(a))
		for i, v := range a {
			ar[i] = RoundBF16(v)
		}
		h := make([]uint16, len(w))
		for i, v := range w {
			h[i] = tensor.F32ToBF16(v)
			w[i] = tensor.BF16ToF32(h[i])
		}
		want := gemmRef(false, true, m, n, k, 1, ar, k, w, k, 0, make([]float32, m*n), n)
		unrounded := gemmRef(false, true, m, n, k, 1, a, k, w, k, 0, make([]float32, m*n), n)
		hb := s.alloc(t, tensor.BF16, len(h))
		s.b.UploadBF16(hb, h)
		for _, beta := range []float32{0, 1} {
			c := s.rand(m*n, 1)
			cb := s.up(t, c)
			s.b.Gemm(false, true, m, n, k, 1, s.up(t, a), k, hb, k, beta, cb, n)
			wb := append([]float32(nil), want...)
			for i := range wb {
				wb[i] += beta * c[i]
			}
			name := fmt.Sprintf("%dx%dx%d/beta=%g", m, n, k, beta)
			got := s.down(t, cb)
			check(t, name, got, wb, s.tol.GemmBF16*math.Sqrt(float64(k)))
			var off float64 // largest distance from the unrounded product
			for i := range got {
				off = math.Max(off, math.Abs(float64(got[i]-beta*c[i]-unrounded[i])))
			}
			if off < 1e-3 {
				t.Errorf("%s: within %.3g of the product of the unrounded A: A was not rounded to bf16", name, off)
			}
		}
	}
}

// RoundBF16 is x rounded to bf16 as tensor.GemmBF16 rounds its A, widened
// back: nearest even, a denormal to a zero of its sign, NaN kept NaN.
func RoundBF16(x float32) float32 {
	if math.Float32bits(x)&0x7f800000 == 0 {
		return float32(math.Copysign(0, float64(x)))
	}
	return tensor.BF16ToF32(tensor.F32ToBF16(x))
}

func (s *suite) embedding(t *testing.T) {
	V, d := 50, 24
	table := s.rand(V*d, 1)
	ids := []int32{3, 0, 49, 3, 17}
	want := make([]float32, len(ids)*d)
	tensor.EmbeddingForward(want, table, ids, d)
	out := s.alloc(t, tensor.F32, len(want))
	s.b.Embedding(out, s.up(t, table), s.upI32(t, ids), d)
	check(t, "f32", s.down(t, out), want, 0)

	h := make([]uint16, len(table))
	for i, v := range table {
		h[i] = tensor.F32ToBF16(v)
	}
	hb := s.alloc(t, tensor.BF16, len(h))
	s.b.UploadBF16(hb, h)
	for r, id := range ids {
		for j := 0; j < d; j++ {
			want[r*d+j] = tensor.BF16ToF32(h[int(id)*d+j])
		}
	}
	s.b.Embedding(out, hb, s.upI32(t, ids), d)
	check(t, "bf16", s.down(t, out), want, 0)
}

func (s *suite) rmsnorm(t *testing.T) {
	for _, sh := range [][2]int{{1, 64}, {37, 96}, {5, 896}, {3, 1500}} {
		n, d := sh[0], sh[1]
		name := fmt.Sprintf("%dx%d", n, d)
		x, w, dout := s.rand(n*d, 3), s.rand(d, 1), s.rand(n*d, 1)
		out, rstd := make([]float32, n*d), make([]float32, n)
		tensor.RMSNormForward(out, rstd, x, w, n, d, 1e-6)
		ob, rb := s.alloc(t, tensor.F32, n*d), s.alloc(t, tensor.F32, n)
		xb, wb := s.up(t, x), s.up(t, w)
		s.b.RMSNormForward(ob, rb, xb, wb, n, d, 1e-6)
		check(t, name+"/out", s.down(t, ob), out, s.tol.Norm)
		check(t, name+"/rstd", s.down(t, rb), rstd, s.tol.Norm)

		dx0, dw0 := s.rand(n*d, 1), s.rand(d, 1) // backward accumulates
		dx, dw := append([]float32(nil), dx0...), append([]float32(nil), dw0...)
		tensor.RMSNormBackward(dx, dw, dout, x, w, rstd, n, d)
		dxb, dwb := s.up(t, dx0), s.up(t, dw0)
		s.b.RMSNormBackward(dxb, dwb, s.up(t, dout), xb, wb, s.up(t, rstd), n, d)
		check(t, name+"/dx", s.down(t, dxb), dx, s.tol.NormBack)
		check(t, name+"/dw", s.down(t, dwb), dw, s.tol.NormBack*math.Sqrt(float64(n)))
	}
}

func (s *suite) rope(t *testing.T) {
	for _, il := range []bool{false, true} {
		r := tensor.NewRoPE(64, 300, 1e6, nil, il)
		n, nh := 9, 3
		x := s.rand(n*nh*64, 2)
		pos := []int32{0, 1, 2, 299, 150, 7, 7, 64, 3}
		want := append([]float32(nil), x...)
		r.Forward(want, pos, n, nh)
		xb, pb := s.up(t, x), s.upI32(t, pos)
		s.b.RoPE(r, xb, pb, n, nh, false)
		check(t, fmt.Sprintf("interleaved=%t/forward", il), s.down(t, xb), want, s.tol.Rope)
		s.b.RoPE(r, xb, pb, n, nh, true)
		check(t, fmt.Sprintf("interleaved=%t/inverse", il), s.down(t, xb), x, 2*s.tol.Rope)
	}
}

func (s *suite) attention(t *testing.T) {
	for _, sh := range []struct{ T, nHead, nKV, hd int }{{1, 2, 2, 16}, {37, 4, 2, 16}, {70, 2, 1, 64}, {130, 14, 2, 64}, {33, 2, 2, 128}} {
		T, nh, nkv, hd := sh.T, sh.nHead, sh.nKV, sh.hd
		name := fmt.Sprintf("T%d/h%d/kv%d/hd%d", T, nh, nkv, hd)
		q, k, v := s.rand(T*nh*hd, 2), s.rand(T*nkv*hd, 2), s.rand(T*nkv*hd, 1)
		out, lse := make([]float32, T*nh*hd), make([]float32, nh*T)
		tensor.AttentionForward(out, lse, q, k, v, make([]float32, tensor.AttentionScratch(T, hd)), T, nh, nkv, hd)
		qb, kb, vb := s.up(t, q), s.up(t, k), s.up(t, v)
		ob, lb := s.alloc(t, tensor.F32, len(out)), s.alloc(t, tensor.F32, len(lse))
		s.b.AttentionForward(ob, lb, qb, kb, vb, T, nh, nkv, hd)
		check(t, name+"/out", s.down(t, ob), out, s.tol.Attention)
		check(t, name+"/lse", s.down(t, lb), lse, s.tol.Attention)
		if hd > 64 {
			continue // backward is checked up to the carry-on's head sizes (hd <= 64)
		}
		dout := s.rand(len(out), 1)
		dq0, dk0, dv0 := s.rand(len(q), 1), s.rand(len(k), 1), s.rand(len(v), 1)
		dq, dk, dv := append([]float32(nil), dq0...), append([]float32(nil), dk0...), append([]float32(nil), dv0...)
		tensor.AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, make([]float32, tensor.AttentionScratch(T, hd)), T, nh, nkv, hd)
		dqb, dkb, dvb := s.up(t, dq0), s.up(t, dk0), s.up(t, dv0)
		s.b.AttentionBackward(dqb, dkb, dvb, s.up(t, dout), qb, kb, vb, s.up(t, out), s.up(t, lse), T, nh, nkv, hd)
		check(t, name+"/dq", s.down(t, dqb), dq, s.tol.AttnBack)
		check(t, name+"/dk", s.down(t, dkb), dk, s.tol.AttnBack)
		check(t, name+"/dv", s.down(t, dvb), dv, s.tol.AttnBack)
	}
}

func (s *suite) pointwise(t *testing.T) {
	n := 3001
	g, u, dout := s.rand(n, 8), s.rand(n, 2), s.rand(n, 1)
	gb, ub, db := s.up(t, g), s.up(t, u), s.up(t, dout)
	tol := s.tol.Pointwise

	want := make([]float32, n)
	tensor.SwiGLUForward(want, g, u)
	ob := s.alloc(t, tensor.F32, n)
	s.b.SwiGLUForward(ob, gb, ub)
	check(t, "swiglu", s.down(t, ob), want, tol)
	a0, b0 := s.rand(n, 1), s.rand(n, 1)
	da, dbv := append([]float32(nil), a0...), append([]float32(nil), b0...)
	tensor.SwiGLUBackward(da, dbv, dout, g, u)
	dab, dbb := s.up(t, a0), s.up(t, b0)
	s.b.SwiGLUBackward(dab, dbb, db, gb, ub)
	check(t, "swiglu/dgate", s.down(t, dab), da, tol)
	check(t, "swiglu/dup", s.down(t, dbb), dbv, tol)

	tensor.SigmoidForward(want, g)
	s.b.SigmoidForward(ob, gb)
	check(t, "sigmoid", s.down(t, ob), want, tol)
	da = append(da[:0], a0...)
	tensor.SigmoidBackward(da, dout, want)
	dab = s.up(t, a0)
	s.b.SigmoidBackward(dab, db, s.up(t, want))
	check(t, "sigmoid/dx", s.down(t, dab), da, tol)

	tensor.MulForward(want, g, u)
	s.b.MulForward(ob, gb, ub)
	check(t, "mul", s.down(t, ob), want, tol)
	da, dbv = append(da[:0], a0...), append(dbv[:0], b0...)
	tensor.MulBackward(da, dbv, dout, g, u)
	dab, dbb = s.up(t, a0), s.up(t, b0)
	s.b.MulBackward(dab, dbb, db, gb, ub)
	check(t, "mul/da", s.down(t, dab), da, tol)
	check(t, "mul/db", s.down(t, dbb), dbv, tol)

	bias := s.rand(7, 1)
	x := s.rand(21, 1)
	xb := s.up(t, x)
	s.b.AddBias(xb, s.up(t, bias), 3, 7)
	for i := range x {
		x[i] += bias[i%7]
	}
	check(t, "bias", s.down(t, xb), x, 0)
}

func (s *suite) xent(t *testing.T) {
	rows, V := 6, 5000
	z := s.rand(rows*V, 6)
	tg := []int32{4, -1, 0, 4999, 17, 2500}
	want, loss := append([]float32(nil), z...), make([]float32, rows)
	tensor.SoftmaxXent(want, tg, loss, rows, V, 0.25)
	zb, lb := s.up(t, z), s.alloc(t, tensor.F32, rows)
	s.b.SoftmaxXent(zb, s.upI32(t, tg), lb, rows, V, 0.25)
	check(t, "grad", s.down(t, zb), want, s.tol.Xent)
	check(t, "loss", s.down(t, lb), loss, s.tol.Xent)
}

func (s *suite) adamw(t *testing.T) {
	n := 2049
	p, g, m, v := s.rand(n, 1), s.rand(n, 0.1), s.rand(n, 0.01), s.rand(n, 0.001)
	for i := range v {
		v[i] = float32(math.Abs(float64(v[i])))
	}
	pb, gb, mb, vb := s.up(t, p), s.up(t, g), s.up(t, m), s.up(t, v)
	for step := 1; step <= 3; step++ {
		tensor.AdamWStep(p, g, m, v, step, 1e-3, 0.9, 0.95, 1e-8, 0.1)
		s.b.AdamW(pb, gb, mb, vb, step, 1e-3, 0.9, 0.95, 1e-8, 0.1)
	}
	check(t, "p", s.down(t, pb), p, s.tol.AdamW)
	check(t, "m", s.down(t, mb), m, s.tol.AdamW)
	check(t, "v", s.down(t, vb), v, s.tol.AdamW)
}

func (s *suite) sumsq(t *testing.T) {
	x := s.rand(100003, 3)
	var want float64
	for _, v := range x {
		want += float64(v) * float64(v)
	}
	got, err := s.b.SumSquares(s.up(t, x))
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(got-want) > s.tol.SumSq*want {
		t.Errorf("SumSquares = %v, want %v", got, want)
	}
}

func (s *suite) encode(t *testing.T) {
	rows, d := 5, 899
	x := s.rand(rows*d, 4)
	x[3], x[d+5], x[2*d+7], x[2*d+8] = float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 1e38
	for j := 0; j < d; j++ {
		x[3*d+j] = 0 // an all-zero token: scale 0
	}
	xb := s.up(t, x)
	for _, name := range []string{"q8", "q4", "q3", "q2", "q5", "q1", "q4g64", "q4a", "bf16"} {
		c, err := tensor.ParseCodec(name)
		if err != nil {
			t.Fatal(err)
		}
		want := c.Encode(nil, x, rows, d)
		got, err := s.b.Encode(c, []byte{0xAA}, xb, rows, d)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) == 0 || got[0] != 0xAA || !bytes.Equal(got[1:], want) {
			t.Errorf("%s: encoding differs from tensor.Codec.Encode (%d bytes, want 1+%d)", name, len(got), len(want))
		}
	}
}
