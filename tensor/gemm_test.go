package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// Tolerances. Every element is compared with a float64 reference against
// the bound that rounding can reach, scaled by the element's magnitude
// mag = |alpha|·Σ_p |a_ip·b_pj| + |beta·c_ij|:
//
//	float32 paths:     |got − want| ≤ (k+2)·2⁻²⁴·mag    (γ_k for a k-term sum)
//	VDPBF16PS path:    |got − want| ≤ (2⁻⁸ + (k+2)·2⁻²⁴)·mag  (A rounded to bf16, u = 2⁻⁸)
//
// A wrong, missing or doubled term moves an element by about mag/k, far
// above these bounds for the sizes tested. The largest error seen, in units
// of 2⁻²⁴·mag, is logged per kernel (go test -v -run Gemm).

const gemmEps = 1.0 / (1 << 24)

// allGemmKernels names every implementation; the ones this CPU lacks skip.
var allGemmKernels = []string{"go", "avx2", "avx512", "avx512bf16", "neon"}

// gemmEmulated has the tile sizes and blocking of the AVX-512 kernels and
// the bf16 pair packing of the VDPBF16PS kernel, with Go micro-kernels, so
// the packing and driver of those paths are checked on every CPU; only the
// assembly itself needs the hardware.
var gemmEmulated = newGemmKernels("emulated-12x32", tileKernel[float32]{
	mr: 12, nr: 32, kc: 256, mc: 192, nc: 3072, kstep: 1, micro: microGoTile(12, 32),
}, &tileKernel[uint16]{
	mr: 12, nr: 32, kc: 512, mc: 192, nc: 3072, kstep: 2, micro: microGoPairs,
}, dot4Go, dot4BF16Go)

// gemmEmulatedNEON has the tile and blocking of the arm64 NEON kernel
// (gemm_arm64.go) with a Go micro-kernel, for the same reason; the NEON
// assembly itself runs under qemu-aarch64 (TestGemmNEONUnderQEMU).
// It also has a widening bf16 kernel (microGoTileH), as the amd64 float32
// sets do, so that the widening packing and driver run on every CPU.
var gemmEmulatedNEON = newGemmKernels("emulated-8x12", tileKernel[float32]{
	mr: 8, nr: 12, kc: 256, mc: 128, nc: 3072, kstep: 1, micro: microGoTile(8, 12),
}, nil, dot4Go, dot4BF16Go).withWideBF16(microGoTileH(8, 12), gemvBF16WGo)

// gemmEmulatedAll are the emulated kernel sets, run on every CPU.
var gemmEmulatedAll = []*gemmKernels{gemmEmulated, gemmEmulatedNEON}

// gemmTestNames names every kernel set a test runs: the real ones (those
// this CPU lacks skip) and the emulated ones.
func gemmTestNames() []string {
	names := slices.Clone(allGemmKernels)
	for _, ks := range gemmEmulatedAll {
		names = append(names, ks.name)
	}
	return names
}

// gemmTestSets is every kernel set this CPU can run plus the emulated ones.
func gemmTestSets() []*gemmKernels {
	return append(slices.Clone(gemmAvailable), gemmEmulatedAll...)
}

// microGoTile returns a plain mr×nr float32 micro-kernel.
func microGoTile(mr, nr int) func(ku int, ap, bp []float32, c []float32, ldc int, alpha, beta float32) {
	return func(ku int, ap, bp []float32, c []float32, ldc int, alpha, beta float32) {
		t := make([]float32, mr*nr)
		for p := 0; p < ku; p++ {
			for i := 0; i < mr; i++ {
				for j := 0; j < nr; j++ {
					t[i*nr+j] += ap[p*mr+i] * bp[p*nr+j]
				}
			}
		}
		mergeTile(c, ldc, t, nr, mr, nr, alpha, beta)
	}
}

// microGoTileH returns the widening kernel of microGoTile(mr, nr) (what
// genF32H's kernels do): A is the float32 panel (2·ku, mr) held as uint16
// pairs, B the bf16 pair panel (ku, nr, 2), widened to (2·ku, nr) and
// multiplied by microGoTile k by k.
func microGoTileH(mr, nr int) func(ku int, ap, bp []uint16, c []float32, ldc int, alpha, beta float32) {
	f32 := microGoTile(mr, nr)
	return func(ku int, ap, bp []uint16, c []float32, ldc int, alpha, beta float32) {
		a := unsafe.Slice((*float32)(unsafe.Pointer(&ap[0])), 2*ku*mr)
		b := make([]float32, 2*ku*nr)
		for q := 0; q < ku; q++ {
			for j := 0; j < nr; j++ {
				b[2*q*nr+j] = BF16ToF32(bp[(q*nr+j)*2])
				b[(2*q+1)*nr+j] = BF16ToF32(bp[(q*nr+j)*2+1])
			}
		}
		f32(2*ku, a, b, c, ldc, alpha, beta)
	}
}

// microGoPairs does what kernBF16x12x32 does on a (ku, 12, 2) A panel and a
// (ku, 32, 2) B panel of bf16: exact products of pairs, the odd one added
// first, in float32 (VDPBF16PS), bit for bit (TestKernBF16Model).
func microGoPairs(ku int, ap, bp []uint16, c []float32, ldc int, alpha, beta float32) {
	const mr, nr = 12, 32
	var t [mr * nr]float32
	for p := 0; p < ku; p++ {
		for i := 0; i < mr; i++ {
			a0, a1 := BF16ToF32(ap[(p*mr+i)*2]), BF16ToF32(ap[(p*mr+i)*2+1])
			for j := 0; j < nr; j++ {
				b0, b1 := BF16ToF32(bp[(p*nr+j)*2]), BF16ToF32(bp[(p*nr+j)*2+1])
				t[i*nr+j] += a1 * b1
				t[i*nr+j] += a0 * b0
			}
		}
	}
	mergeTile(c, ldc, t[:], nr, mr, nr, alpha, beta)
}

func gemmKernelsOrSkip(t testing.TB, name string) *gemmKernels {
	ks := gemmKernelsNamed(name)
	if ks == nil {
		t.Skipf("this CPU/build cannot run the %s kernels", name)
	}
	return ks
}

// gemmKernelsNamed returns the named kernel set, or nil where this CPU or
// build cannot run it.
func gemmKernelsNamed(name string) *gemmKernels {
	for _, ks := range gemmEmulatedAll {
		if ks.name == name {
			return ks
		}
	}
	for _, ks := range gemmAvailable {
		if ks.name == name {
			return ks
		}
	}
	return nil
}

// gemmRef returns the float64 product and each element's magnitude bound.
func gemmRef(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int,
	b []float32, ldb int, beta float32, c []float32, ldc int) (want, mag []float64) {
	want, mag = make([]float64, m*n), make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s, sa float64
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
				s += float64(av) * float64(bv)
				sa += math.Abs(float64(av) * float64(bv))
			}
			w := float64(alpha) * s
			g := math.Abs(float64(alpha)) * sa
			if beta != 0 {
				w += float64(beta) * float64(c[i*ldc+j])
				g += math.Abs(float64(beta) * float64(c[i*ldc+j]))
			}
			want[i*n+j], mag[i*n+j] = w, g
		}
	}
	return want, mag
}

type gemmCase struct {
	transA, transB bool
	m, n, k        int
	padA, padB     int // extra leading-dimension elements
	padC           int
	alpha, beta    float32
}

func (c gemmCase) String() string {
	return fmt.Sprintf("tA=%v tB=%v m=%d n=%d k=%d pad=%d/%d/%d alpha=%g beta=%g",
		c.transA, c.transB, c.m, c.n, c.k, c.padA, c.padB, c.padC, c.alpha, c.beta)
}

func gemmCases(rng *rand.Rand) []gemmCase {
	var cs []gemmCase
	sizes := []int{1, 3, 17, 63, 65, 129}
	for _, tA := range []bool{false, true} {
		for _, tB := range []bool{false, true} {
			// every odd size on each axis, the others fixed small
			for _, s := range sizes {
				cs = append(cs,
					gemmCase{tA, tB, s, 7, 5, 0, 0, 0, 1, 0},
					gemmCase{tA, tB, 9, s, 13, 1, 2, 3, 1.5, 0},
					gemmCase{tA, tB, 10, 6, s, 3, 0, 1, -0.75, 0.5})
			}
			// random shapes, sizes not multiples of any tile, random strides
			for r := 0; r < 6; r++ {
				cs = append(cs, gemmCase{tA, tB,
					1 + rng.IntN(140), 1 + rng.IntN(140), 1 + rng.IntN(140),
					rng.IntN(4), rng.IntN(4), rng.IntN(4),
					float32(rng.NormFloat64()), []float32{0, 1, -0.5}[r%3]})
			}
			// crossing the kc, mc and nc blocks of every kernel
			cs = append(cs, gemmCase{tA, tB, 205, 97, 301, 1, 2, 3, 0.5, 2})
		}
	}
	cs = append(cs,
		gemmCase{false, true, 3, 3100, 19, 0, 0, 0, 1, 0},  // small m, n > nc
		gemmCase{false, false, 13, 3100, 9, 0, 0, 0, 1, 1}, // n > nc
		gemmCase{true, false, 130, 35, 520, 0, 0, 0, 1, 0}, // dW shape, k > 2kc
		gemmCase{false, true, 8, 40, 1030, 2, 1, 0, 1, 0},  // decode, k tail
		gemmCase{false, true, 1, 1031, 96, 0, 0, 0, 1, 0},  // decode times a head: rows in runs of 4, k a multiple of 32
		gemmCase{false, true, 1, 70, 48, 1, 3, 2, 1, 0},    // the same, k an odd multiple of 16, strided
		gemmCase{false, true, 1, 70, 48, 0, 0, 0, 2, 0.5},  // alpha, beta: not the one-row kernel
	)
	return cs
}

// gemmOperands draws A (m×k) and B (k×n, or n×k with transB) with padded
// leading dimensions, and gives the leading dimension for C (m×n).
func gemmOperands(rng *rand.Rand, m, n, k int, transB bool) (a []float32, lda int, b []float32, ldb, ldc int) {
	lda, ldb, ldc = k+3, n+1, n+2
	if transB {
		ldb = k + 5
	}
	a = gemmRandSlice(rng, (m-1)*lda+k)
	if transB {
		b = gemmRandSlice(rng, (n-1)*ldb+k)
	} else {
		b = gemmRandSlice(rng, (k-1)*ldb+n)
	}
	return a, lda, b, ldb, ldc
}

func gemmRandSlice(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64())
	}
	return s
}

// runGemmCase runs one case through Gemm with gemmImpl swapped to ks, and
// returns the largest error in units of gemmEps·mag.
func runGemmCase(t *testing.T, ks *gemmKernels, tc gemmCase, rng *rand.Rand) float64 {
	t.Helper()
	ar, ac := tc.m, tc.k
	if tc.transA {
		ar, ac = tc.k, tc.m
	}
	br, bc := tc.k, tc.n
	if tc.transB {
		br, bc = tc.n, tc.k
	}
	lda, ldb, ldc := ac+tc.padA, bc+tc.padB, tc.n+tc.padC
	a := gemmRandSlice(rng, (ar-1)*lda+ac)
	b := gemmRandSlice(rng, (br-1)*ldb+bc)
	c := gemmRandSlice(rng, (tc.m-1)*ldc+tc.n)
	if tc.beta == 0 { // garbage that must be ignored
		for i := range c {
			c[i] = float32(math.NaN())
		}
	}
	const sentinel = 12345.5
	for i := 0; i < tc.m; i++ { // padding between rows of C must survive
		for j := tc.n; j < ldc && i*ldc+j < len(c); j++ {
			c[i*ldc+j] = sentinel
		}
	}
	want, mag := gemmRef(tc.transA, tc.transB, tc.m, tc.n, tc.k, tc.alpha, a, lda, b, ldb, tc.beta, c, ldc)
	saved := gemmImpl
	gemmImpl = ks.gemm
	Gemm(tc.transA, tc.transB, tc.m, tc.n, tc.k, tc.alpha, a, lda, b, ldb, tc.beta, c, ldc)
	gemmImpl = saved
	bound := float64(tc.k + 2)
	worst := 0.0
	for i := 0; i < tc.m; i++ {
		for j := 0; j < ldc && i*ldc+j < len(c); j++ {
			got := c[i*ldc+j]
			if j >= tc.n {
				if got != sentinel {
					t.Fatalf("%v: C[%d,%d] outside the matrix changed to %v", tc, i, j, got)
				}
				continue
			}
			w, g := want[i*tc.n+j], mag[i*tc.n+j]
			e := math.Abs(float64(got) - w)
			if !(e <= bound*gemmEps*g) { // also catches NaN
				t.Fatalf("%v: C[%d,%d] = %v, want %v (error %.3g > bound %.3g)", tc, i, j, got, w, e, bound*gemmEps*g)
			}
			if g > 0 {
				worst = max(worst, e/(gemmEps*g))
			}
		}
	}
	return worst
}

func TestGemmKernels(t *testing.T) {
	for _, name := range gemmTestNames() {
		t.Run(name, func(t *testing.T) {
			ks := gemmKernelsOrSkip(t, name)
			rng := rand.New(rand.NewPCG(1, 2))
			worst := 0.0
			for _, tc := range gemmCases(rng) {
				worst = max(worst, runGemmCase(t, ks, tc, rng))
			}
			t.Logf("%s: largest error %.2f·2⁻²⁴·mag", name, worst)
		})
	}
}

// TestGemmThreadGrid runs the blocked path split over 1..7 threads, which the
// 2-core test machine would not reach through GOMAXPROCS alone.
func TestGemmThreadGrid(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	m, n, k := 150, 170, 90
	a, b := gemmRandSlice(rng, m*k), gemmRandSlice(rng, k*n)
	want, mag := gemmRef(false, false, m, n, k, 1, a, k, b, n, 0, nil, n)
	for _, ks := range gemmAvailable {
		for threads := 1; threads <= 7; threads++ {
			c := make([]float32, m*n)
			g := gemmJob{m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: b, ldb: n, c: c, ldc: n}
			runBlocked(&g, ks.f32, threads)
			for i, w := range want {
				if e := math.Abs(float64(c[i]) - w); !(e <= float64(k+2)*gemmEps*mag[i]) {
					t.Fatalf("%s, %d threads: C[%d] = %v, want %v", ks.name, threads, i, c[i], w)
				}
			}
		}
	}
}

func TestGemmGrid(t *testing.T) {
	for _, tc := range []struct{ m, n, k, threads int }{
		{2048, 2048, 2048, 2}, {512, 4864, 896, 2}, {2048, 2048, 2048, 16}, {7, 5000, 100, 4},
		{5000, 7, 100, 4}, {10, 10, 10, 8},
	} {
		tm, tn := gemmGrid(tc.m, tc.n, tc.k, 6, 16, 3072, tc.threads)
		if tm < 1 || tn < 1 || tm*tn > tc.threads {
			t.Errorf("gemmGrid(%v) = %d×%d", tc, tm, tn)
		}
		if tc.m*tc.n*tc.k > 1<<24 && tm*tn <= tc.threads/2 {
			t.Errorf("gemmGrid(%v) = %d×%d leaves threads idle", tc, tm, tn)
		}
	}
}

func TestGemmAlphaZeroIgnoresAB(t *testing.T) {
	for _, ks := range gemmAvailable {
		nan := float32(math.NaN())
		a, b := []float32{nan, nan, nan, nan}, []float32{nan, nan, nan, nan}
		c := []float32{1, 2, 3, 4}
		ks.gemm(false, true, 2, 2, 2, 0, a, 2, b, 2, 3, c, 2)
		if c[0] != 3 || c[3] != 12 {
			t.Errorf("%s: alpha=0 gave %v, want [3 6 9 12]", ks.name, c)
		}
		c = []float32{nan, nan, nan, nan}
		ks.gemm(false, false, 2, 2, 0, 1, nil, 1, nil, 2, 0, c, 2)
		if c[0] != 0 || c[3] != 0 {
			t.Errorf("%s: k=0, beta=0 gave %v, want zeros", ks.name, c)
		}
	}
}

func TestGemmPanicsOnShortSlices(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "tensor.Gemm") {
			t.Fatalf("recover() = %v, want a tensor.Gemm panic", r)
		}
	}()
	Gemm(false, false, 2, 2, 2, 1, make([]float32, 3), 2, make([]float32, 4), 2, 0, make([]float32, 4), 2)
}

// TestGemmBF16Kernels checks GemmBF16's one numerics on every kernel set
// and path (decode m ≤ 8, the native VDPBF16PS blocked path, the widening
// blocked paths): against a float64 sum of the products of A rounded to bf16
// (roundBF16Go) and B, each element within the float32 summation bound
// (k+2)·2⁻²⁴·Σ|a·b|. A path that multiplied the unrounded A would be off
// by up to 2⁻⁸·Σ|a·b|, which the test also checks it is not.
func TestGemmBF16Kernels(t *testing.T) {
	for _, name := range gemmTestNames() {
		t.Run(name, func(t *testing.T) {
			ks := gemmKernelsOrSkip(t, name)
			rng := rand.New(rand.NewPCG(5, 6))
			worst, unrounded := 0.0, 0.0
			shapes := [][3]int{{1, 1, 1}, {3, 17, 63}, {8, 65, 129}, {9, 33, 17}, {17, 63, 65},
				{65, 129, 3}, {129, 40, 300}, {13, 3100, 20}, {200, 70, 513}}
			for r := 0; r < 8; r++ {
				shapes = append(shapes, [3]int{1 + rng.IntN(100), 1 + rng.IntN(100), 1 + rng.IntN(300)})
			}
			for _, s := range shapes {
				m, n, k := s[0], s[1], s[2]
				lda, ldb, ldc := k+rng.IntN(3), k+rng.IntN(3), n+rng.IntN(3)
				a := gemmRandSlice(rng, (m-1)*lda+k)
				ar := make([]float32, len(a))
				roundBF16F32Row(ar, a)
				bw := gemmRandSlice(rng, (n-1)*ldb+k)
				bh := make([]uint16, len(bw))
				for i, v := range bw {
					bh[i] = F32ToBF16(v)
					bw[i] = BF16ToF32(bh[i])
				}
				c := make([]float32, (m-1)*ldc+n)
				for i := range c {
					c[i] = float32(math.NaN())
				}
				want, mag := gemmRef(false, true, m, n, k, 1, ar, lda, bw, ldb, 0, nil, ldc)
				exact, _ := gemmRef(false, true, m, n, k, 1, a, lda, bw, ldb, 0, nil, ldc)
				ks.gemmBF16(m, n, k, a, lda, bh, ldb, c, ldc)
				bound := float64(k+2) * gemmEps
				for i := 0; i < m; i++ {
					for j := 0; j < n; j++ {
						got, w, g := c[i*ldc+j], want[i*n+j], mag[i*n+j]
						e := math.Abs(float64(got) - w)
						if !(e <= bound*g) {
							t.Fatalf("m=%d n=%d k=%d: C[%d,%d] = %v, want %v (error %.3g > %.3g)", m, n, k, i, j, got, w, e, bound*g)
						}
						if g > 0 {
							worst = max(worst, e/(gemmEps*g))
							unrounded = max(unrounded, math.Abs(float64(got)-exact[i*n+j])/g)
						}
					}
				}
			}
			t.Logf("%s: largest error vs the rounded-A reference %.2f·2⁻²⁴·mag; vs the unrounded A %.3g·mag", name, worst, unrounded)
			if unrounded < 1.0/4096 {
				t.Errorf("%s: results within %.3g·mag of the unrounded-A product: A was not rounded to bf16", name, unrounded)
			}
		})
	}
}

// TestGemmAsmGenerated checks that gemm_amd64.s is what gemm_gen.go writes,
// and that the hand-encoded VDPBF16PS and VCVTNE2PS2BF16 bytes (the Go assembler has no
// AVX512_BF16 mnemonics) match GNU as, so the encoding is checked even on
// CPUs that cannot run it.
func TestGemmAsmGenerated(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the generator")
	}
	src := checkGenerated(t, "gemm_amd64.s", "gemm_gen.go")
	re := regexp.MustCompile(`BYTE (.*) // (VDPBF16PS|VCVTNE2PS2BF16) Z(\d+), Z(\d+), Z(\d+)`)
	var gas strings.Builder
	var wantBytes []string
	seen := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		fmt.Fprintf(&gas, "%s %%zmm%s, %%zmm%s, %%zmm%s\n", strings.ToLower(m[2]), m[3], m[4], m[5])
		wantBytes = append(wantBytes, byteDirective(t, m[1])...)
		seen[m[2]] = true
	}
	if !seen["VDPBF16PS"] || !seen["VCVTNE2PS2BF16"] {
		t.Fatalf("gemm_amd64.s lacks VDPBF16PS or VCVTNE2PS2BF16 (found %v)", seen)
	}
	checkX86Encodings(t, "AVX512_BF16", gas.String(), wantBytes)
}

// TestDotRows checks each kernel set's one-row product with a row-major
// B (the decode LM head), float32 and bf16, against float64, on k multiples
// of 16 and runs of one or more rows.
func TestDotRows(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 3))
	tested := 0
	for _, ks := range gemmAvailable {
		for _, bf16 := range []bool{false, true} {
			if (!bf16 && ks.dotRows == nil) || (bf16 && ks.dotRowsH == nil) {
				continue
			}
			tested++
			for _, k := range []int{16, 32, 48, 80, 896} {
				for _, n := range []int{1, 3, 8} {
					ldb := k + 8
					a, b := gemmRandSlice(rng, k), gemmRandSlice(rng, 4*n*ldb)
					out := make([]float32, 4*n)
					if bf16 {
						bh := make([]uint16, len(b))
						for i, v := range b {
							bh[i] = F32ToBF16(v)
							b[i] = BF16ToF32(bh[i])
						}
						ks.dotRowsH(k, a, bh, ldb, n, out)
					} else {
						ks.dotRows(k, a, b, ldb, n, out)
					}
					for j := range out {
						var want, mag float64
						for p := 0; p < k; p++ {
							v := float64(a[p]) * float64(b[j*ldb+p])
							want, mag = want+v, mag+math.Abs(v)
						}
						if e := math.Abs(float64(out[j]) - want); !(e <= float64(k)*gemmEps*mag) {
							t.Fatalf("%s bf16=%v k=%d n=%d: out[%d] = %g, want %g", ks.name, bf16, k, n, j, out[j], want)
						}
					}
				}
			}
		}
	}
	t.Logf("%d kernels (kernel sets × element types) with dotRows", tested)
}
