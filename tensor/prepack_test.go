package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
)

// TestGemmPacked checks GemmPacked against Gemm on the same kernel: the
// blocked path must give bitwise the same C (same products, same order),
// over shapes that cross every block edge (kc, nc, partial panels), both
// layouts of B, alpha/beta and thread counts. Small m with transB (Gemm's
// dot-product path, GemmPacked's gemv kernels for every row count 1..4 and
// groups of four, one panel at a time and several side by side with a
// remainder) is checked against a float64 reference at the Gemm tolerance.
func TestGemmPacked(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	shapes := []struct{ m, n, k int }{
		{1, 1, 1}, {3, 17, 5}, {8, 40, 300}, {9, 33, 257}, {13, 16, 16}, {37, 70, 513},
		{64, 3100, 40}, {100, 50, 1}, {7, 3073, 19}, {2, 33, 260}, {5, 20, 40}, {6, 50, 513},
		// enough panels per thread for the multi-stream small-m kernels, with remainders
		{1, 300, 600}, {1, 64, 256}, {2, 130, 513}, {3, 90, 257}, {4, 100, 70},
	}
	for _, ks := range gemmTestSets() {
		for _, s := range shapes {
			for _, transB := range []bool{false, true} {
				for _, th := range []int{1, 2, 3} {
					name := fmt.Sprintf("%s/%dx%dx%d/transB=%v/threads=%d", ks.name, s.m, s.n, s.k, transB, th)
					old := runtime.GOMAXPROCS(th)
					a, lda, b, ldb, ldc := gemmOperands(rng, s.m, s.n, s.k, transB)
					c0 := gemmRandSlice(rng, (s.m-1)*ldc+s.n)
					pb := packBWith(ks, transB, s.n, s.k, b, ldb)
					if pb.N() != s.n || pb.K() != s.k || pb.Floats() < s.n*s.k {
						t.Fatalf("%s: PackedB n=%d k=%d floats=%d", name, pb.N(), pb.K(), pb.Floats())
					}
					for _, ab := range [][2]float32{{1, 0}, {0.5, 1}, {-2, 0.25}} {
						want := append([]float32(nil), c0...)
						got := append([]float32(nil), c0...)
						ks.gemm(false, transB, s.m, s.n, s.k, ab[0], a, lda, b, ldb, ab[1], want, ldc)
						GemmPacked(s.m, ab[0], a, lda, pb, ab[1], got, ldc)
						if transB && s.m <= smallMMax {
							checkPackedRef(t, name, s.m, s.n, s.k, ab[0], a, lda, b, ldb, transB, ab[1], c0, got, ldc)
							continue
						}
						for i := range got {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%s alpha=%v beta=%v: c[%d] = %v, Gemm gives %v", name, ab[0], ab[1], i, got[i], want[i])
							}
						}
					}
					runtime.GOMAXPROCS(old)
				}
			}
		}
	}
}

// checkPackedRef compares C with a float64 reference at the tolerance of
// gemm_test.go: (k+2)·2⁻²⁴·Σ|terms|; the padding of C must be untouched.
func checkPackedRef(t *testing.T, name string, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int,
	transB bool, beta float32, c0, got []float32, ldc int) {
	t.Helper()
	for i := 0; i < m; i++ {
		for j := 0; j < ldc && i*ldc+j < len(got); j++ {
			idx := i*ldc + j
			if j >= n {
				if got[idx] != c0[idx] {
					t.Fatalf("%s: padding c[%d] changed", name, idx)
				}
				continue
			}
			var s, mag float64
			for p := 0; p < k; p++ {
				var bv float32
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += float64(a[i*lda+p]) * float64(bv)
				mag += math.Abs(float64(a[i*lda+p]) * float64(bv))
			}
			want := float64(alpha)*s + float64(beta)*float64(c0[idx])
			mag = math.Abs(float64(alpha))*mag + math.Abs(float64(beta)*float64(c0[idx]))
			if d := math.Abs(float64(got[idx]) - want); !(d <= float64(k+2)*gemmEps*mag) { // NaN fails too
				t.Fatalf("%s: c[%d,%d] = %v, want %v (err %.3g, bound %.3g)", name, i, j, got[idx], want, d, float64(k+2)*gemmEps*mag)
			}
		}
	}
}

// TestGemmPackedPanics checks the shape checks.
func TestGemmPackedPanics(t *testing.T) {
	pb := PackB(true, 4, 3, make([]float32, 12), 3)
	for name, f := range map[string]func(){
		"short b":  func() { PackB(true, 4, 3, make([]float32, 11), 3) },
		"small ld": func() { PackB(false, 4, 3, make([]float32, 12), 3) },
		"short a":  func() { GemmPacked(2, 1, make([]float32, 5), 3, pb, 0, make([]float32, 8), 4) },
		"short c":  func() { GemmPacked(2, 1, make([]float32, 6), 3, pb, 0, make([]float32, 7), 4) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

// BenchmarkGemmPacked compares Gemm with GemmPacked on the base forward's
// shapes (T = 512 tokens times Qwen2.5-0.5B weights (n, k), transB).
func BenchmarkGemmPacked(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 9))
	for _, s := range []struct {
		name    string
		m, n, k int
	}{{"qkv", 512, 1152, 896}, {"gateup", 512, 4864, 896}, {"down", 512, 896, 4864}} {
		a := gemmRandSlice(rng, s.m*s.k)
		w := gemmRandSlice(rng, s.n*s.k)
		c := make([]float32, s.m*s.n)
		pb := PackB(true, s.n, s.k, w, s.k)
		for _, packed := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/packed=%v", s.name, packed), func(b *testing.B) {
				cpu0 := cpuTime()
				for b.Loop() {
					if packed {
						GemmPacked(s.m, 1, a, s.k, pb, 0, c, s.n)
					} else {
						Gemm(false, true, s.m, s.n, s.k, 1, a, s.k, w, s.k, 0, c, s.n)
					}
				}
				reportGFLOPS(b, s.m, s.n, s.k, cpu0)
			})
		}
	}
}

// TestCrossEntropyLMHeadPacked checks the packed-head cross-entropy against
// CrossEntropyLMHead: bitwise equal loss and dy for every chunk size (runs
// of at most 8 rows go through Gemm's dot path in both), with masked runs
// and the loss-only mode; and that mismatched packings panic.
func TestCrossEntropyLMHeadPacked(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	T, D, V := 45, 24, 1037
	y := randSlice(rng, T*D, 1)
	w := randSlice(rng, V*D, 0.5)
	wt, wn := PackB(true, V, D, w, D), PackB(false, D, V, w, D)
	for _, masked := range []bool{false, true} {
		targets := make([]int32, T)
		for i := range targets {
			targets[i] = int32(rng.IntN(V))
			if masked && (i%7 == 3 || (i >= 30 && i < 33)) {
				targets[i] = -1
			}
		}
		for _, chunk := range []int{3, 9, 16, 64} {
			scratch := make([]float32, chunk*V)
			dyWant, dyGot := make([]float32, T*D), make([]float32, T*D)
			lw, nw := CrossEntropyLMHead(dyWant, y, w, targets, T, D, V, chunk, 0.25, scratch)
			lg, ng := CrossEntropyLMHeadPacked(dyGot, y, w, wt, wn, targets, T, chunk, 0.25, scratch)
			lo, no := CrossEntropyLMHeadPacked(nil, y, w, wt, nil, targets, T, chunk, 0, scratch)
			counted := 0
			for _, tg := range targets {
				if tg >= 0 {
					counted++
				}
			}
			if nw != ng || nw != no || nw != counted {
				t.Fatalf("chunk %d: counts %d %d %d, want %d", chunk, nw, ng, no, counted)
			}
			if lw != lg || lw != lo {
				t.Errorf("masked %v chunk %d: loss %v (packed %v, loss only %v)", masked, chunk, lw, lg, lo)
			}
			for i := range dyWant {
				if math.Float32bits(dyWant[i]) != math.Float32bits(dyGot[i]) {
					t.Fatalf("masked %v chunk %d: dy[%d] = %v, unpacked %v", masked, chunk, i, dyGot[i], dyWant[i])
				}
			}
		}
	}
	targets := make([]int32, T)
	defer func() {
		if recover() == nil {
			t.Error("dy without a packed W: no panic")
		}
	}()
	CrossEntropyLMHeadPacked(make([]float32, T*D), y, w, wt, wt, targets, T, 4, 1, make([]float32, 4*V))
}

// BenchmarkCrossEntropyLMHeadPacked times the carry-on's LM-head loss and
// gradient (T = 256, D = 896, V = 32000, as BenchmarkCrossEntropyLMHead)
// with the head packed once, per chunk size; cpu-ms/op is the process CPU
// time per call (robust to other load on a shared machine).
func BenchmarkCrossEntropyLMHeadPacked(b *testing.B) {
	T, D, V := 256, 896, 32000
	rng := rand.New(rand.NewPCG(2, 2))
	y := randSlice(rng, T*D, 1)
	w := randSlice(rng, V*D, 0.05)
	targets := randTargets(rng, T, V)
	dy := make([]float32, T*D)
	wt, wn := PackB(true, V, D, w, D), PackB(false, D, V, w, D)
	for _, chunk := range []int{64, 256} {
		for _, packed := range []bool{false, true} {
			b.Run(fmt.Sprintf("chunk=%d/packed=%v", chunk, packed), func(b *testing.B) {
				scratch := make([]float32, chunk*V)
				cpu0 := cpuTime()
				for b.Loop() {
					if packed {
						CrossEntropyLMHeadPacked(dy, y, w, wt, wn, targets, T, chunk, 1, scratch)
					} else {
						CrossEntropyLMHead(dy, y, w, targets, T, D, V, chunk, 1, scratch)
					}
				}
				b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
				b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tokens/s")
			})
		}
	}
}

// BenchmarkGemmPackedSmallM compares GemmPacked with Gemm (transB, its
// dot-product path on the unpacked weight) for decode-sized m on the
// Qwen2.5-0.5B MLP weights, with 1 thread and all of them.
//
//	go test ./tensor/ -run XXX -bench GemmPackedSmallM
func BenchmarkGemmPackedSmallM(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 10))
	for _, s := range []struct {
		name string
		n, k int
	}{{"gateup", 4864, 896}, {"down", 896, 4864}} {
		w := gemmRandSlice(rng, s.n*s.k)
		pb := PackB(true, s.n, s.k, w, s.k)
		for _, m := range []int{1, 2, 4, 8} {
			a := gemmRandSlice(rng, m*s.k)
			c := make([]float32, m*s.n)
			for _, th := range benchThreads() {
				for _, packed := range []bool{false, true} {
					b.Run(fmt.Sprintf("%s/m=%d/packed=%v/threads=%d", s.name, m, packed, th), func(b *testing.B) {
						mul := func() { Gemm(false, true, m, s.n, s.k, 1, a, s.k, w, s.k, 0, c, s.n) }
						if packed {
							mul = func() { GemmPacked(m, 1, a, s.k, pb, 0, c, s.n) }
						}
						benchGFLOPS(b, th, m, s.n, s.k, mul)
					})
				}
			}
		}
	}
}

// BenchmarkGemmPackedDecode streams the weights of a decode step: the
// seven matrices of eight Qwen2.5-0.5B layers (about 480 MB, far past the
// caches) times one row, packed for each kernel set, and reports the
// weight bytes read per second of wall time and per CPU-second.
//
//	go test ./tensor/ -run XXX -bench GemmPackedDecode -benchtime 20x
func BenchmarkGemmPackedDecode(b *testing.B) {
	const layers, D, kv, ffn = 8, 896, 128, 4864
	shapes := [][2]int{{D, D}, {kv, D}, {kv, D}, {D, D}, {ffn, D}, {ffn, D}, {D, ffn}} // (n, k) per matrix
	rng := rand.New(rand.NewPCG(7, 11))
	src := gemmRandSlice(rng, ffn*D)
	a := gemmRandSlice(rng, ffn)
	c := make([]float32, ffn)
	for _, ks := range gemmAvailable {
		var pbs []*PackedB
		bytes := 0.0
		for range layers {
			for _, s := range shapes {
				pbs = append(pbs, packBWith(ks, true, s[0], s[1], src, s[1]))
				bytes += 4 * float64(s[0]*s[1])
			}
		}
		for _, th := range benchThreads() {
			b.Run(fmt.Sprintf("%s/threads=%d", ks.name, th), func(b *testing.B) {
				withProcs(b, th, func() {
					cpu0 := cpuTime()
					for b.Loop() {
						for _, pb := range pbs {
							GemmPacked(1, 1, a, pb.K(), pb, 0, c, pb.N())
						}
					}
					b.ReportMetric(bytes*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
					b.ReportMetric(bytes*float64(b.N)/(cpuTime()-cpu0).Seconds()/1e9, "GB/cpu-s")
				})
			})
		}
		pbs = nil
		runtime.GC()
	}
}
