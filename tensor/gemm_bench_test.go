package tensor

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// go test ./tensor/ -bench MatMul -run XXX
//
// Every kernel this CPU can run, with 1 thread and with all of them, against
// gonum's pure-Go blas32 Sgemm on the same shapes. GFLOP/s counts 2·m·n·k.

type benchShape struct {
	name           string
	transA, transB bool
	m, n, k        int
}

var gemmBenchShapes = []benchShape{
	{"512x512x512", false, false, 512, 512, 512},
	{"2048x2048x2048", false, false, 2048, 2048, 2048},
	{"qwen-mlp-512x4864x896-tB", false, true, 512, 4864, 896}, // Qwen2.5-0.5B up/gate proj
	{"decode-1x4864x896-tB", false, true, 1, 4864, 896},
	{"dW-896x4864x512-tA", true, false, 896, 4864, 512},
}

func benchThreads() []int {
	if runtime.NumCPU() == 1 {
		return []int{1}
	}
	return []int{1, runtime.NumCPU()}
}

// reportGFLOPS reports GFLOP/s over wall time and, because the benchmark
// machine may be shared, GFLOP per CPU-second of this process (per-core
// efficiency, unaffected by time slicing). cpu0 is cpuTime() at the start.
func reportGFLOPS(b *testing.B, m, n, k int, cpu0 time.Duration) {
	flops := 2 * float64(m) * float64(n) * float64(k) * float64(b.N)
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	b.ReportMetric(flops/(cpuTime()-cpu0).Seconds()/1e9, "GFLOP/cpu-s")
}

func withProcs(b *testing.B, threads int, f func()) {
	old := runtime.GOMAXPROCS(threads)
	defer runtime.GOMAXPROCS(old)
	f()
}

// benchGFLOPS times mul, an m×n×k product, on the given number of threads
// and reports it with reportGFLOPS.
func benchGFLOPS(b *testing.B, threads, m, n, k int, mul func()) {
	withProcs(b, threads, func() {
		cpu0 := cpuTime()
		for b.Loop() {
			mul()
		}
		reportGFLOPS(b, m, n, k, cpu0)
	})
}

func BenchmarkMatMul(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, s := range gemmBenchShapes {
		a := gemmRandSlice(rng, s.m*s.k)
		bm := gemmRandSlice(rng, s.k*s.n)
		c := make([]float32, s.m*s.n)
		lda, ldb := s.k, s.n
		if s.transA {
			lda = s.m
		}
		if s.transB {
			ldb = s.k
		}
		// avx512bf16's float32 kernel is avx512's.
		for _, name := range []string{"go", "avx2", "avx512", "neon", "gonum"} {
			for _, th := range benchThreads() {
				b.Run(fmt.Sprintf("%s/%s/threads=%d", s.name, name, th), func(b *testing.B) {
					var mul func()
					if name == "gonum" {
						ta, tb := blas.NoTrans, blas.NoTrans
						if s.transA {
							ta = blas.Trans
						}
						if s.transB {
							tb = blas.Trans
						}
						impl := blas32.Implementation()
						mul = func() { impl.Sgemm(ta, tb, s.m, s.n, s.k, 1, a, lda, bm, ldb, 0, c, s.n) }
					} else {
						ks := gemmKernelsOrSkip(b, name)
						mul = func() { ks.gemm(s.transA, s.transB, s.m, s.n, s.k, 1, a, lda, bm, ldb, 0, c, s.n) }
					}
					benchGFLOPS(b, th, s.m, s.n, s.k, mul)
				})
			}
		}
	}
}

// BenchmarkMatMulBF16 times GemmBF16 (bf16 weights (n, k)) per kernel,
// and, per kernel set that packs bf16 (a native bf16 kernel, or the
// float32 sets' widening one), GemmPacked on a PackBBF16Bits packing of
// the same weight ("packed-"; for m ≤ 8 its small-m path, and
// "packed-blocked-" the blocked kernel it replaces there), with the
// packed weight's bytes read per second (wGB/s: decode is bound by it).
//
//	go test ./tensor/ -bench MatMulBF16 -run XXX
func BenchmarkMatMulBF16(b *testing.B) {
	rng := rand.New(rand.NewPCG(9, 10))
	for _, s := range []benchShape{
		{"qwen-mlp-512x4864x896", false, true, 512, 4864, 896},
		{"decode-1x4864x896", false, true, 1, 4864, 896},
		{"decode-1x896x4864", false, true, 1, 896, 4864},
	} {
		a := gemmRandSlice(rng, s.m*s.k)
		bh := randBF16(rng, s.n*s.k)
		c := make([]float32, s.m*s.n)
		names := slices.Clone(allGemmKernels)
		for _, n := range allGemmKernels {
			names = append(names, "packed-"+n)
			if s.m <= packedSmallMMax {
				names = append(names, "packed-blocked-"+n)
			}
		}
		for _, name := range names {
			for _, th := range benchThreads() {
				b.Run(fmt.Sprintf("%s/%s/threads=%d", s.name, name, th), func(b *testing.B) {
					kname := strings.TrimPrefix(strings.TrimPrefix(name, "packed-"), "blocked-")
					ks := gemmKernelsOrSkip(b, kname)
					var pb *PackedB
					if kname != name {
						if pb = packBBF16BitsWith(ks, nil, s.n, s.k, bh, s.k); pb == nil {
							b.Skipf("%s does not pack bf16", kname)
						}
					}
					mul := func() { ks.gemmBF16(s.m, s.n, s.k, a, s.k, bh, s.k, c, s.n) }
					switch {
					case strings.HasPrefix(name, "packed-blocked-"):
						mul = func() {
							g := gemmJob{m: s.m, n: s.n, k: s.k, alpha: 1, a: a, lda: s.k, c: c, ldc: s.n, packed: pb}
							runBlocked(&g, ks.halfKernel(), th)
						}
					case pb != nil:
						mul = func() { GemmPacked(s.m, 1, a, s.k, pb, 0, c, s.n) }
					}
					benchGFLOPS(b, th, s.m, s.n, s.k, mul)
					if pb != nil {
						b.ReportMetric(float64(pb.Bytes())*float64(b.N)/b.Elapsed().Seconds()/1e9, "wGB/s")
					}
				})
			}
		}
	}
}

// BenchmarkGemmQ8 times the int8 products (GemmQ8 in place and
// GemmQ8Packed, each kernel) against GemmQuant (Q8_0 decoded to float32
// inside the blocked GEMM) on the same Q8_0 weight: the Qwen2.5-0.5B MLP
// (prefill: gate/up, down) and decode shapes.
//
//	go test ./tensor/ -bench GemmQ8 -run XXX
func BenchmarkGemmQ8(b *testing.B) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, s := range []benchShape{
		{"qwen-mlp-512x4864x896", false, true, 512, 4864, 896},
		{"qwen-down-512x896x4864", false, true, 512, 896, 4864},
		{"decode-1x4864x896", false, true, 1, 4864, 896},
	} {
		w := randQ8Matrix(rng, s.n, s.k)
		wp := PackQ8(w)
		a := gemmRandSlice(rng, s.m*s.k)
		c := make([]float32, s.m*s.n)
		var names []string
		for _, n := range allQ8Kernels {
			names = append(names, "packed-"+n)
		}
		for _, name := range append(append([]string{"f32-decoded"}, allQ8Kernels...), names...) {
			for _, th := range benchThreads() {
				b.Run(fmt.Sprintf("%s/%s/threads=%d", s.name, name, th), func(b *testing.B) {
					mul := func() { GemmQuant(s.m, a, s.k, w, c, s.n) }
					wBytes := len(w.Data)
					switch {
					case strings.HasPrefix(name, "packed-"):
						kp := q8pKernelsOrSkip(b, strings.TrimPrefix(name, "packed-"))
						mul = func() { gemmQ8PackedWith(kp, s.m, a, s.k, wp, c, s.n) }
						wBytes = len(wp.data)
					case name != "f32-decoded":
						ks := q8KernelsOrSkip(b, name)
						mul = func() { gemmQ8With(ks, s.m, a, s.k, &w, c, s.n) }
					}
					benchGFLOPS(b, th, s.m, s.n, s.k, mul)
					b.ReportMetric(float64(wBytes)*float64(b.N)/b.Elapsed().Seconds()/1e9, "wGB/s")
				})
			}
		}
	}
}

// BenchmarkBF16Blocking times the bf16 blocked kernel on a prepacked B
// (GemmPacked, m > 8) at the depth blocks kc = 512 and 1024 (the set's
// choice, see gemm_amd64.go), on the Qwen2.5-0.5B prefill's products and
// its LM head's, for every kernel set with a native bf16 kernel:
//
//	go test ./tensor/ -bench BF16Blocking -run XXX
func BenchmarkBF16Blocking(b *testing.B) {
	rng := rand.New(rand.NewPCG(13, 14))
	for _, s := range []benchShape{
		{"qkv-512x1152x896", false, true, 512, 1152, 896},
		{"o-512x896x896", false, true, 512, 896, 896},
		{"mlp-512x4864x896", false, true, 512, 4864, 896},
		{"down-512x896x4864", false, true, 512, 896, 4864},
		{"head-1024x151936x896", false, true, 1024, 151936, 896},
	} {
		a := gemmRandSlice(rng, s.m*s.k)
		w := gemmRandSlice(rng, s.n*s.k)
		c := make([]float32, s.m*s.n)
		for _, ks := range gemmAvailable {
			if ks.bf16 == nil {
				continue
			}
			for _, kc := range []int{512, 1024} {
				set := *ks
				kn := *ks.bf16
				kn.kc = kc
				set.bf16 = &kn
				pb := packBBF16With(&set, true, s.n, s.k, w, s.k)
				for _, th := range benchThreads() {
					b.Run(fmt.Sprintf("%s/%s/kc=%d/threads=%d", s.name, ks.name, kc, th), func(b *testing.B) {
						benchGFLOPS(b, th, s.m, s.n, s.k, func() { GemmPacked(s.m, 1, a, s.k, pb, 0, c, s.n) })
					})
				}
			}
		}
	}
}
