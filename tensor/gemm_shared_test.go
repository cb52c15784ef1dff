package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestGemmSharedB runs the shared-B schedule directly, over 2..7 threads
// (more threads than the 2-core test machine has, and more than some blocks
// have micro-panels), with small blocks so that every shape crosses several
// (kc, nc) blocks, partial panels and both B buffers; every kernel set and
// both transposes, beta ≠ 0 and the native bf16 kernels included.
func TestGemmSharedB(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	shapes := [][3]int{{150, 170, 90}, {7, 33, 300}, {61, 500, 41}, {200, 65, 129}}
	for _, ks := range gemmTestSets() {
		small := func(kn tileKernel[float32]) *tileKernel[float32] {
			kn.kc, kn.mc, kn.nc = 40, 2*kn.mr, 3*kn.nr
			return &kn
		}
		kn := small(*ks.f32)
		for _, s := range shapes {
			m, n, k := s[0], s[1], s[2]
			for _, tr := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
				lda, ldb := k+1, n+2
				if tr[0] {
					lda = m + 1
				}
				if tr[1] {
					ldb = k + 2
				}
				ar, br := m, k
				if tr[0] {
					ar = k
				}
				if tr[1] {
					br = n
				}
				a, b := gemmRandSlice(rng, ar*lda), gemmRandSlice(rng, br*ldb)
				c0 := gemmRandSlice(rng, m*n)
				want, mag := gemmRef(tr[0], tr[1], m, n, k, 0.5, a, lda, b, ldb, -1.5, c0, n)
				for threads := 2; threads <= 7; threads++ {
					c := append([]float32(nil), c0...)
					g := gemmJob{transA: tr[0], transB: tr[1], m: m, n: n, k: k, alpha: 0.5, beta: -1.5,
						a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: n}
					runSharedB(&g, kn, threads)
					for i, w := range want {
						if e := math.Abs(float64(c[i]) - w); !(e <= float64(k+2)*gemmEps*mag[i]) {
							t.Fatalf("%s %v trans %v, %d threads: C[%d] = %v, want %v", ks.name, s, tr, threads, i, c[i], w)
						}
					}
				}
			}
		}
		if ks.bf16 == nil {
			continue
		}
		kb := *ks.bf16
		kb.kc, kb.mc, kb.nc = 40, 2*kb.mr, 3*kb.nr
		for _, s := range shapes {
			m, n, k := s[0], s[1], s[2]
			a := gemmRandSlice(rng, m*k)
			bw := gemmRandSlice(rng, n*k)
			bh := make([]uint16, len(bw))
			for i, v := range bw {
				bh[i] = F32ToBF16(v)
				bw[i] = BF16ToF32(bh[i])
			}
			want, mag := gemmRef(false, true, m, n, k, 1, a, k, bw, k, 0, nil, n)
			for threads := 2; threads <= 7; threads++ {
				c := make([]float32, m*n)
				for i := range c {
					c[i] = float32(math.NaN())
				}
				g := gemmJob{transB: true, m: m, n: n, k: k, alpha: 1, a: a, lda: k, bh: bh, ldb: k, c: c, ldc: n}
				runSharedB(&g, &kb, threads)
				for i, w := range want {
					if e := math.Abs(float64(c[i]) - w); !(e <= (1.0/256+float64(k+2)*gemmEps)*mag[i]) {
						t.Fatalf("%s bf16 %v, %d threads: C[%d] = %v, want %v", ks.name, s, threads, i, c[i], w)
					}
				}
			}
		}
	}
}

// TestUseSharedB checks when runBlocked takes the shared-B schedule.
func TestUseSharedB(t *testing.T) {
	avx2 := &tileKernel[float32]{mr: 6, nr: 16, kc: 256, mc: 144, nc: 3072, kstep: 1}
	avx512 := &tileKernel[float32]{mr: 12, nr: 32, kc: 384, mc: 384, nc: 3072, kstep: 1}
	for _, tc := range []struct {
		kn               *tileKernel[float32]
		m, n, k, threads int
		packed           bool
		want             bool
	}{
		{avx512, 2048, 2048, 2048, 2, false, true},
		{avx512, 512, 4864, 896, 2, false, false},
		{avx2, 2048, 2048, 2048, 2, false, true}, // the grid packs all of B (or A) on both threads
		{avx2, 512, 4864, 896, 2, false, false},  // split N, each half in one nc block: no saving
		{avx2, 896, 4864, 512, 2, false, false},
		{avx2, 2048, 2048, 2048, 1, false, false},
		{avx2, 2048, 2048, 2048, 2, true, false},
		{avx2, 150, 2048, 2048, 2, false, false}, // too few rows per thread
		{avx2, 256, 64, 64, 2, false, false},     // too little work
	} {
		g := gemmJob{m: tc.m, n: tc.n, k: tc.k}
		if tc.packed {
			g.packed = &PackedB{}
		}
		kn := tc.kn
		tm, tn := gemmGrid(tc.m, tc.n, tc.k, kn.mr, kn.nr, kn.nc, tc.threads)
		if got := useSharedB(&g, kn, tc.threads, tm, tn); got != tc.want {
			t.Errorf("%d×%d tile: useSharedB(%d×%d×%d, %d threads, packed %v) = %v, want %v", kn.mr, kn.nr, tc.m, tc.n, tc.k, tc.threads, tc.packed, got, tc.want)
		}
	}
}

// TestGemmSharedA runs the shared-A schedule directly on a prepacked B,
// over 2..7 threads (more than some shapes have micro-panels), with small
// blocks and a small chunk of A so that every shape crosses several (kc,
// nc) blocks, chunks of rows and partial panels; every kernel set's float32
// kernel and native bf16 kernel, beta ≠ 0. It must give the bits of the
// one-thread loop nest (same products in the same order).
func TestGemmSharedA(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	shapes := [][3]int{{150, 170, 90}, {7, 33, 300}, {61, 500, 41}, {200, 65, 129}}
	for _, ks := range gemmTestSets() {
		for _, bf16 := range []bool{false, true} {
			if bf16 && ks.bf16 == nil {
				continue
			}
			small := *ks
			f := *ks.f32
			f.kc, f.mc, f.nc = 40, 2*f.mr, 3*f.nr
			small.f32 = &f
			if bf16 {
				h := *ks.bf16
				h.kc, h.mc, h.nc = 40, 2*h.mr, 3*h.nr
				small.bf16 = &h
			}
			for _, s := range shapes {
				m, n, k := s[0], s[1], s[2]
				for _, transB := range []bool{false, true} {
					a, lda, b, ldb, ldc := gemmOperands(rng, m, n, k, transB)
					c0 := gemmRandSlice(rng, (m-1)*ldc+n)
					var pb *PackedB
					if bf16 {
						pb = packBBF16With(&small, transB, n, k, b, ldb)
					} else {
						pb = packBWith(&small, transB, n, k, b, ldb)
					}
					job := func(c []float32) gemmJob {
						return gemmJob{m: m, n: n, k: k, alpha: 0.5, beta: -1.5, a: a, lda: lda, c: c, ldc: ldc, packed: pb}
					}
					want := append([]float32(nil), c0...)
					gw := job(want)
					if bf16 {
						blockedRect(&gw, small.bf16, 0, m, 0, n)
					} else {
						blockedRect(&gw, small.f32, 0, m, 0, n)
					}
					for threads := 2; threads <= 7; threads++ {
						for _, maxElems := range []int{1, 3000, sharedAMaxElems} {
							got := append([]float32(nil), c0...)
							g := job(got)
							if bf16 {
								runSharedA(&g, small.bf16, threads, maxElems)
							} else {
								runSharedA(&g, small.f32, threads, maxElems)
							}
							for i := range got {
								if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
									t.Fatalf("%s bf16=%v %v transB=%v, %d threads, chunk of %d: C[%d] = %v, one thread gives %v",
										ks.name, bf16, s, transB, threads, maxElems, i, got[i], want[i])
								}
							}
						}
					}
				}
			}
		}
	}
}

// TestUseSharedA checks when runBlocked takes the shared-A schedule.
func TestUseSharedA(t *testing.T) {
	bf16 := &tileKernel[uint16]{mr: 12, nr: 32, kc: 1024, mc: 192, nc: 3072, kstep: 2}
	for _, tc := range []struct {
		m, n, k, threads int
		packed           bool
		want             bool
	}{
		{512, 4864, 896, 2, true, true}, // the prefill's MLP: the grid splits the columns
		{512, 896, 4864, 2, true, true},
		{512, 4864, 896, 2, false, false}, // B packed per call: shared-B's business
		{512, 4864, 896, 1, true, false},
		{2048, 32, 896, 2, true, false}, // one micro-panel: the grid splits the rows
		{16, 64, 64, 2, true, false},    // too little work
	} {
		g := gemmJob{m: tc.m, n: tc.n, k: tc.k}
		if tc.packed {
			g.packed = &PackedB{}
		}
		tm, tn := gemmGrid(tc.m, tc.n, tc.k, bf16.mr, bf16.nr, bf16.nc, tc.threads)
		if got := useSharedA(&g, bf16, tc.threads, tm, tn); got != tc.want {
			t.Errorf("useSharedA(%d×%d×%d, %d threads, packed %v; grid %d×%d) = %v, want %v", tc.m, tc.n, tc.k, tc.threads, tc.packed, tm, tn, got, tc.want)
		}
	}
}
