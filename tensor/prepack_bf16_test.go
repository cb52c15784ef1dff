package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"unsafe"
)

// roundBF16 returns x rounded to bf16 (nearest even), as float32s.
func roundBF16(x []float32) []float32 {
	r := make([]float32, len(x))
	for i, v := range x {
		r[i] = BF16ToF32(F32ToBF16(v))
	}
	return r
}

// TestGemmPackedBF16 checks GemmPacked on a PackBBF16 packing, for every
// kernel set with a native bf16 kernel (the VDPBF16PS one where the CPU has
// AVX512_BF16; the emulated 12×32 pair kernel everywhere): A and B rounded
// to bf16 and multiplied must match a float64 product of the rounded
// operands within the float32 summation bound (the products of bf16 pairs
// are exact), over shapes that cross every block edge (odd k, k past kc,
// partial panels, m from 1), both layouts of B, alpha/beta and thread
// counts. Unpack must give the rounded B back. Kernel sets without a bf16
// kernel must return nil (the caller's signal to use PackB).
func TestGemmPackedBF16(t *testing.T) {
	shapes := []struct{ m, n, k int }{
		{1, 1, 1}, {3, 17, 5}, {8, 40, 300}, {9, 33, 257}, {13, 16, 16}, {37, 70, 513},
		{64, 3100, 40}, {100, 50, 1}, {2, 33, 260}, {25, 64, 767},
	}
	for _, name := range gemmTestNames() {
		t.Run(name, func(t *testing.T) {
			ks := gemmKernelsOrSkip(t, name)
			rng := rand.New(rand.NewPCG(21, 22))
			if ks.bf16 == nil {
				if pb := packBBF16With(ks, true, 3, 4, make([]float32, 12), 4); pb != nil {
					t.Fatalf("%s has no bf16 kernel but packBBF16With returned a packing", name)
				}
				return
			}
			for _, s := range shapes {
				for _, transB := range []bool{false, true} {
					for _, th := range []int{1, 2, 3} {
						sub := fmt.Sprintf("%dx%dx%d/transB=%v/threads=%d", s.m, s.n, s.k, transB, th)
						old := runtime.GOMAXPROCS(th)
						a, lda, b, ldb, ldc := gemmOperands(rng, s.m, s.n, s.k, transB)
						ar, br := roundBF16(a), roundBF16(b)
						c0 := gemmRandSlice(rng, (s.m-1)*ldc+s.n)
						pb := packBBF16With(ks, transB, s.n, s.k, b, ldb)
						if !pb.BF16() || pb.N() != s.n || pb.K() != s.k || pb.Bytes() < 2*s.n*s.k {
							t.Fatalf("%s: PackedB bf16=%v n=%d k=%d bytes=%d", sub, pb.BF16(), pb.N(), pb.K(), pb.Bytes())
						}
						for _, ab := range [][2]float32{{1, 0}, {0.5, 1}, {-2, 0.25}} {
							got := append([]float32(nil), c0...)
							GemmPacked(s.m, ab[0], a, lda, pb, ab[1], got, ldc)
							checkPackedRef(t, sub, s.m, s.n, s.k, ab[0], ar, lda, br, ldb, transB, ab[1], c0, got, ldc)
							// gemmPackedThreads (the cross-entropy's slabs) on one goroutine: the same bits.
							if ab[0] == 1 {
								one := append([]float32(nil), c0...)
								gemmPackedThreads(1, s.m, a, lda, pb, ab[1], one, ldc)
								for i := range one {
									if math.Float32bits(one[i]) != math.Float32bits(got[i]) {
										t.Fatalf("%s: one thread gives c[%d] = %v, GemmPacked %v", sub, i, one[i], got[i])
									}
								}
							}
						}
						back := make([]float32, len(b))
						pb.Unpack(transB, back, ldb)
						for j := 0; j < s.n; j++ {
							for p := 0; p < s.k; p++ {
								idx := p*ldb + j
								if transB {
									idx = j*ldb + p
								}
								if back[idx] != br[idx] {
									t.Fatalf("%s: Unpack gives B[%d] = %v, want the rounded %v", sub, idx, back[idx], br[idx])
								}
							}
						}
						runtime.GOMAXPROCS(old)
					}
				}
			}
		})
	}
}

// TestCrossEntropyLMHeadPackedBF16 checks the LM-head loss and gradient
// with the head packed by PackBBF16 against the exact float32
// CrossEntropyLMHead, at a carry-on's scale (D = 896, head std 0.02,
// unit-scale y) and with masked runs, for every kernel set with a bf16
// kernel. The stated tolerance: head, y and the softmax gradient rows are
// rounded to bf16 (8 significant bits), so each logit is off by about
// 2⁻⁹·√D·rms(y·w) and the mean loss by much less; the bounds below are
// loss relative error ≤ 1e-3 and dy relative L2 error ≤ 1e-2 (measured
// here: see the test log).
func TestCrossEntropyLMHeadPackedBF16(t *testing.T) {
	T, D, V := 40, 384, 2003
	if testing.Short() {
		T, D, V = 29, 256, 1031
	}
	for _, name := range gemmTestNames() {
		t.Run(name, func(t *testing.T) {
			ks := gemmKernelsOrSkip(t, name)
			if ks.bf16 == nil {
				t.Skipf("%s has no bf16 kernel (PackBBF16 returns nil: the caller packs float32)", name)
			}
			rng := rand.New(rand.NewPCG(31, 32))
			y := randSlice(rng, T*D, 1)
			w := randSlice(rng, V*D, 0.02)
			wt, wn := packBBF16With(ks, true, V, D, w, D), packBBF16With(ks, false, D, V, w, D)
			targets := make([]int32, T)
			for i := range targets {
				targets[i] = int32(rng.IntN(V))
				if i%11 == 5 {
					targets[i] = -1
				}
			}
			for _, chunk := range []int{5, 24, 64} {
				scratch := make([]float32, chunk*V)
				dyWant, dyGot := make([]float32, T*D), make([]float32, T*D)
				lw, nw := CrossEntropyLMHead(dyWant, y, w, targets, T, D, V, chunk, 0.5, scratch)
				lg, ng := CrossEntropyLMHeadPacked(dyGot, y, w, wt, wn, targets, T, chunk, 0.5, scratch)
				lo, _ := CrossEntropyLMHeadPacked(nil, y, w, wt, nil, targets, T, chunk, 0, scratch)
				if nw != ng {
					t.Fatalf("chunk %d: count %d, want %d", chunk, ng, nw)
				}
				if lo != lg {
					t.Errorf("chunk %d: loss-only %v, with gradient %v", chunk, lo, lg)
				}
				lossErr := math.Abs(lg-lw) / math.Abs(lw)
				var num, den float64
				for i := range dyWant {
					d := float64(dyGot[i]) - float64(dyWant[i])
					num += d * d
					den += float64(dyWant[i]) * float64(dyWant[i])
				}
				dyErr := math.Sqrt(num / den)
				t.Logf("%s chunk %d: loss %.6f vs f32 %.6f (rel %.2g), dy rel L2 %.2g", name, chunk, lg, lw, lossErr, dyErr)
				if !(lossErr <= 1e-3) || !(dyErr <= 1e-2) {
					t.Fatalf("chunk %d: loss rel error %.3g (bound 1e-3), dy rel L2 %.3g (bound 1e-2)", chunk, lossErr, dyErr)
				}
			}
			defer func() {
				if recover() == nil {
					t.Error("a bf16 wt with a float32 w: no panic")
				}
			}()
			CrossEntropyLMHeadPacked(make([]float32, T*D), y, w, wt, packBWith(ks, false, D, V, w, D), targets, T, 4, 1, make([]float32, 4*V))
		})
	}
}

// TestLMHeadChunk checks that the chunk is a whole number of tile rows per
// core when it can be, and at most the rows asked for.
func TestLMHeadChunk(t *testing.T) {
	for _, th := range []int{1, 2, 3} {
		old := runtime.GOMAXPROCS(th)
		unit := gemmBest.f32.mr * th
		for _, maxRows := range []int{1, 5, unit - 1, unit, unit + 1, 55, 256} {
			got := LMHeadChunk(maxRows)
			if got < 1 || got > maxRows || (maxRows >= unit && got%unit != 0) || (maxRows >= unit && got+unit <= maxRows) || (maxRows < unit && got != maxRows) {
				t.Errorf("threads %d: LMHeadChunk(%d) = %d (unit %d)", th, maxRows, got, unit)
			}
		}
		runtime.GOMAXPROCS(old)
	}
}

// TestPackBBF16Bits checks that packing a bf16 W in place (PackBBF16Bits,
// into a new slice or into float32 storage of its own) stores what
// PackBBF16 stores for the same values widened, and that GemmPacked then
// gives the same bits; where the CPU has no native bf16 kernel it must pack
// for the widening kernel if the CPU's set has one (TestGemmPackedWide
// checks that packing's products), and return nil otherwise.
func TestPackBBF16Bits(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	for _, s := range []struct{ n, k, ldh int }{{1, 1, 1}, {33, 17, 19}, {70, 513, 513}, {64, 1030, 1031}} {
		h := make([]uint16, (s.n-1)*s.ldh+s.k)
		f := make([]float32, len(h))
		for i := range h {
			h[i] = F32ToBF16(float32(rng.NormFloat64()))
			f[i] = BF16ToF32(h[i])
		}
		want := PackBBF16(true, s.n, s.k, f, s.ldh)
		if want == nil {
			pb := PackBBF16Bits(nil, s.n, s.k, h, s.ldh)
			if wide := gemmBest.bf16w != nil; (pb != nil) != wide || PacksBF16() != wide || (PackedBF16Floats(s.n, s.k) != 0) != wide {
				t.Fatalf("no native bf16 kernel, widening kernel %v: PackBBF16Bits packed %v, PacksBF16 %v, PackedBF16Floats %d",
					wide, pb != nil, PacksBF16(), PackedBF16Floats(s.n, s.k))
			}
			t.Skip("this CPU has no native bf16 kernel")
		}
		store := make([]float32, PackedBF16Floats(s.n, s.k)+3)
		for _, got := range []*PackedB{PackBBF16Bits(nil, s.n, s.k, h, s.ldh), PackBBF16Bits(store, s.n, s.k, h, s.ldh)} {
			if !slices.Equal(got.half, want.half) || got.N() != s.n || got.K() != s.k || !got.BF16() {
				t.Fatalf("n=%d k=%d: PackBBF16Bits differs from PackBBF16 of the widened values", s.n, s.k)
			}
			m := 20
			a := gemmRandSlice(rng, m*s.k)
			c1, c2 := make([]float32, m*s.n), make([]float32, m*s.n)
			GemmPacked(m, 1, a, s.k, got, 0, c1, s.n)
			GemmPacked(m, 1, a, s.k, want, 0, c2, s.n)
			if !slices.Equal(c1, c2) {
				t.Fatalf("n=%d k=%d: GemmPacked differs between the two packings", s.n, s.k)
			}
		}
		if unsafe.Pointer(&store[0]) != unsafe.Pointer(unsafe.SliceData(PackBBF16Bits(store, s.n, s.k, h, s.ldh).half)) {
			t.Fatal("PackBBF16Bits did not pack into dst")
		}
	}
}

// TestGemmPackedBF16SmallM checks GemmPacked's small-m path on bf16
// packings (m ≤ packedSmallMMax = 8, the gemvBF16 kernels), for every
// kernel set with a bf16 kernel, with its depth block as packed (1024 for
// the VDPBF16PS kernel, 512 emulated) and cut to 40 (a small-kc copy of
// the set), so that k crosses blocks, odd k included; partial panels, both
// layouts of B, thread counts (a shape with work enough for several),
// alpha/beta. Each result must be within the float64 reference bound of
// the rounded operands, and with alpha = 1, beta = 0 it must be bitwise the
// one-thread blocked bf16 kernel on the same packing (blockedRect): the same
// pair sums per lane in order of k, merged block by block.
func TestGemmPackedBF16SmallM(t *testing.T) {
	type shape struct{ n, k int }
	for _, ks := range gemmTestSets() {
		if ks.bf16 == nil {
			continue
		}
		rng := rand.New(rand.NewPCG(25, 26))
		for _, kc := range []int{ks.bf16.kc, 40} {
			small := *ks
			h := *ks.bf16
			h.kc = kc
			small.bf16 = &h
			shapes := []shape{{200, 301}, {33, 80}, {64, 1}, {1, 2}, {97, 2 * kc}}
			if kc != 40 {
				shapes = append(shapes, shape{2100, 2*kc + 3}) // several threads (work ≥ 2²³)
			}
			for _, s := range shapes {
				for m := 1; m <= packedSmallMMax; m++ {
					if s.n*s.k > 1<<20 && m%4 != 1 {
						continue // the large shape at m = 1 and 5
					}
					for _, transB := range []bool{false, true} {
						a, lda, b, ldb, ldc := gemmOperands(rng, m, s.n, s.k, transB)
						ar, br := roundBF16(a), roundBF16(b)
						pb := packBBF16With(&small, transB, s.n, s.k, b, ldb)
						c0 := gemmRandSlice(rng, (m-1)*ldc+s.n)
						blocked := append([]float32(nil), c0...)
						g := gemmJob{m: m, n: s.n, k: s.k, alpha: 1, a: a, lda: lda, c: blocked, ldc: ldc, packed: pb}
						blockedRect(&g, small.bf16, 0, m, 0, s.n)
						for _, th := range []int{1, 2, 3} {
							old := runtime.GOMAXPROCS(th)
							sub := fmt.Sprintf("%s kc=%d %dx%dx%d transB=%v threads=%d", ks.name, kc, m, s.n, s.k, transB, th)
							for _, ab := range [][2]float32{{1, 0}, {0.5, 1}, {-2, 0.25}} {
								got := append([]float32(nil), c0...)
								GemmPacked(m, ab[0], a, lda, pb, ab[1], got, ldc)
								checkPackedRef(t, sub, m, s.n, s.k, ab[0], ar, lda, br, ldb, transB, ab[1], c0, got, ldc)
								if ab == [2]float32{1, 0} {
									for i := range got {
										if math.Float32bits(got[i]) != math.Float32bits(blocked[i]) {
											t.Fatalf("%s: c[%d] = %v, the blocked kernel gives %v", sub, i, got[i], blocked[i])
										}
									}
								}
							}
							runtime.GOMAXPROCS(old)
						}
					}
				}
			}
		}
	}
}

// TestGemvBF16Model checks each bf16 small-m kernel (gemvBF16: the
// AVX512_BF16 assembly where the CPU has it, and its Go model in the
// emulated set) bit for bit against the blocked kernel's model
// microGoPairs (itself checked against kernBF16x12x32, TestKernBF16Model):
// rows 1..4 of A and 1..5 segments (every run of the kernels: 4, 2, 1, and
// 3 as 2+1), depths around the unroll of 4, out overwritten or added to,
// and the gaps between segments and rows left alone.
func TestGemvBF16Model(t *testing.T) {
	const nr = 32
	rng := rand.New(rand.NewPCG(27, 28))
	randH := func(n int) []uint16 {
		h := make([]uint16, n)
		for i := range h {
			h[i] = F32ToBF16(float32(rng.NormFloat64()))
		}
		return h
	}
	tested := 0
	for _, ks := range gemmTestSets() {
		if ks.bf16 == nil {
			continue
		}
		tested++
		for rows := 1; rows <= 4; rows++ {
			for ns := 1; ns <= 5; ns++ {
				for _, kp := range []int{1, 2, 3, 4, 5, 7, 8, 9, 128} {
					lda, bs, os := 2*kp+6, 2*kp*nr+64, rows*nr+8
					a, b := randH(rows*lda), randH(ns*bs)
					out0 := gemmRandSlice(rng, ns*os)
					for _, add := range []bool{false, true} {
						want := append([]float32(nil), out0...)
						for s := 0; s < ns; s++ {
							ap := make([]uint16, kp*12*2) // rows of A in a 12-row panel, the rest zero
							for i := 0; i < rows; i++ {
								for p := 0; p < 2*kp; p++ {
									ap[(p/2*12+i)*2+p%2] = a[i*lda+p]
								}
							}
							tile := make([]float32, 12*nr)
							microGoPairs(kp, ap, b[s*bs:s*bs+2*kp*nr], tile, nr, 1, 0)
							for i := 0; i < rows; i++ {
								for q := 0; q < nr; q++ {
									w := &want[s*os+i*nr+q]
									if add {
										*w += tile[i*nr+q]
									} else {
										*w = tile[i*nr+q]
									}
								}
							}
						}
						got := append([]float32(nil), out0...)
						ks.gemvBF16(rows, ns, kp, a, lda, b, nr, bs, got, os, add)
						for i := range got {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%s rows=%d ns=%d kp=%d add=%v: out[%d] = %v, model %v", ks.name, rows, ns, kp, add, i, got[i], want[i])
							}
						}
					}
				}
			}
		}
	}
	if tested == 0 {
		t.Fatal("no kernel set with a bf16 kernel (the emulated one should be)")
	}
}
