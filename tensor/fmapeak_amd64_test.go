//go:build amd64 && !purego

package tensor

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkFMAPeak measures this CPU's float32 FMA peak per core (12
// independent chains, no memory traffic), the denominator of "share of
// peak" for the GEMM benchmarks, and the VDPBF16PS peak (avx512bf16: each
// lane of an instruction is 2 products and 2 sums, 4 flops) for the bf16
// ones (BenchmarkMatMulBF16):
//
//	go test ./tensor/ -bench 'FMAPeak|MatMul/2048' -run XXX
func BenchmarkFMAPeak(b *testing.B) {
	for _, c := range []struct {
		name  string
		ok    bool
		lanes int
		f     func(int)
		flops int // per lane per instruction
	}{
		{"avx2", hasAVX2, 8, fmaPeakAVX2, 2},
		{"avx512", hasAVX512, 16, fmaPeakAVX512, 2},
		{"avx512bf16", hasBF16, 16, bf16PeakAVX512, 4},
	} {
		// threads=2 runs the chains on two goroutines at once: the ceiling
		// of a 2-thread GEMM where both cores' clocks and shared parts are
		// busy, which can be below twice threads=1.
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/threads=%d", c.name, threads), func(b *testing.B) {
				if !c.ok {
					b.Skipf("%s: not available on this CPU", c.name)
				}
				const iters = 1 << 20
				cpu0 := cpuTime()
				for b.Loop() {
					var wg sync.WaitGroup
					for range threads {
						wg.Go(func() { c.f(iters) })
					}
					wg.Wait()
				}
				flops := float64(iters) * 12 * float64(c.lanes*c.flops) * float64(b.N) * float64(threads)
				b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				b.ReportMetric(flops/(cpuTime()-cpu0).Seconds()/1e9, "GFLOP/cpu-s")
			})
		}
	}
}

// BenchmarkMicroKernel times each micro-kernel alone on panels that stay
// in L1 (256 steps of k), the ceiling of the blocked GEMM: compare its
// GFLOP/cpu-s with BenchmarkFMAPeak (bf16-12x32 with avx512bf16's). The
// widening kernels (…H: a bf16 pair B widened as it is read) run on the
// same depth as their float32 kernels.
func BenchmarkMicroKernel(b *testing.B) {
	const ku = 256
	for _, c := range []struct {
		name   string
		ok     bool
		mr, nr int
		f      func(int, []float32, []float32, []float32, int, float32, float32)
	}{{"avx2-6x16", hasAVX2, 6, 16, microAVX2}, {"avx512-12x32", hasAVX512, 12, 32, microAVX512}} {
		b.Run(c.name, func(b *testing.B) {
			if !c.ok {
				b.Skipf("%s: not available on this CPU", c.name)
			}
			ap := make([]float32, ku*c.mr)
			bp := make([]float32, ku*c.nr)
			cc := make([]float32, c.mr*c.nr)
			cpu0 := cpuTime()
			for b.Loop() {
				c.f(ku, ap, bp, cc, c.nr, 1, 1)
			}
			reportMicroKernel(b, ku, c.mr, c.nr, cpu0)
		})
	}
	for _, c := range []struct {
		name   string
		ok     bool
		mr, nr int
		f      func(int, []uint16, []uint16, []float32, int, float32, float32)
	}{{"avx2-6x16H", hasAVX2, 6, 16, microAVX2H}, {"avx512-12x32H", hasAVX512, 12, 32, microAVX512H}} {
		b.Run(c.name, func(b *testing.B) {
			if !c.ok {
				b.Skipf("%s: not available on this CPU", c.name)
			}
			ap := make([]uint16, 2*ku*c.mr) // (ku, mr) float32s
			bp := make([]uint16, ku*c.nr)   // (ku/2, nr, 2) bf16
			cc := make([]float32, c.mr*c.nr)
			cpu0 := cpuTime()
			for b.Loop() {
				c.f(ku/2, ap, bp, cc, c.nr, 1, 1)
			}
			reportMicroKernel(b, ku, c.mr, c.nr, cpu0)
		})
	}
	b.Run("bf16-12x32", func(b *testing.B) {
		if !hasBF16 {
			b.Skip("avx512bf16: not available on this CPU")
		}
		const kp = ku / 2 // pairs along k
		ap := make([]uint16, ku*12)
		bp := make([]uint16, ku*32)
		cc := make([]float32, 12*32)
		cpu0 := cpuTime()
		for b.Loop() {
			microBF16(kp, ap, bp, cc, 32, 1, 1)
		}
		reportMicroKernel(b, ku, 12, 32, cpu0)
	})
}

func reportMicroKernel(b *testing.B, ku, mr, nr int, cpu0 time.Duration) {
	flops := 2 * float64(ku*mr*nr) * float64(b.N)
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	b.ReportMetric(flops/(cpuTime()-cpu0).Seconds()/1e9, "GFLOP/cpu-s")
}
