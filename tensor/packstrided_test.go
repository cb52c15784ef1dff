package tensor

import (
	"math/rand/v2"
	"testing"
)

// TestPackStrided checks the transposing copy (its assembly groups of 8
// and 4 rows, and the Go rows and columns around them) against its
// definition, for every row count up to the panel width, depths that are
// and are not multiples of 8, and a row stride wider than the depth.
func TestPackStrided(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	for _, w := range []int{4, 6, 8, 12, 16, 32} {
		for rows := 0; rows <= w; rows++ {
			for _, kc := range []int{0, 1, 7, 8, 9, 16, 23, 64, 100} {
				ld, off := kc+3, 5
				src := gemmRandSlice(rng, off+max(rows, 1)*ld)
				d := gemmRandSlice(rng, kc*w+7) // garbage that must be overwritten; a tail that must not
				tail := append([]float32(nil), d[kc*w:]...)
				packStrided(d, src, off, ld, rows, w, kc)
				for p := 0; p < kc; p++ {
					for q := 0; q < w; q++ {
						want := float32(0)
						if q < rows {
							want = src[off+q*ld+p]
						}
						if got := d[p*w+q]; got != want {
							t.Fatalf("w=%d rows=%d kc=%d: d[%d·w+%d] = %v, want %v", w, rows, kc, p, q, got, want)
						}
					}
				}
				for i, v := range tail {
					if d[kc*w+i] != v {
						t.Fatalf("w=%d rows=%d kc=%d: wrote past the panel at %d", w, rows, kc, kc*w+i)
					}
				}
			}
		}
	}
}

// BenchmarkPackA times packing A blocks of a 2048×2048 row-major A the
// way the blocked GEMM does (packAF32, the transposing copy), for the
// AVX-512 (12-row panels, kc = mc = 384) and AVX2 (6-row, kc 256, mc 144)
// blockings. GB/s counts the bytes read.
func BenchmarkPackA(b *testing.B) {
	const n = 2048
	a := gemmRandSlice(rand.New(rand.NewPCG(1, 1)), n*n)
	for _, c := range []struct {
		name       string
		mr, kc, mc int
	}{{"12x384x384", 12, 384, 384}, {"6x256x144", 6, 256, 144}} {
		b.Run(c.name, func(b *testing.B) {
			g := gemmJob{m: n, n: n, k: n, a: a, lda: n}
			dst := make([]float32, c.mc*c.kc)
			i := 0
			for b.Loop() {
				i0, p0 := (i*c.mc)%(n-c.mc), (i*c.kc*3)%(n-c.kc)
				packAF32(dst, &g, c.mr, i0, c.mc, p0, c.kc)
				i++
			}
			b.ReportMetric(float64(c.mc*c.kc*4)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}
