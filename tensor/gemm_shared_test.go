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
