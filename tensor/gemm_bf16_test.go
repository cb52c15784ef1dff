package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestGemmBF16PathsAgree runs every bf16-weight product path this CPU has
// (GemmBF16 on each kernel set, real and emulated, and GemmPacked on a
// PackBBF16Bits-style packing where a set has a native bf16 kernel) on
// Qwen2.5-0.5B's matrix shapes, decode (m = 1) and prefill rows, and checks
// that they agree with a float64 reference of the one bf16 numerics (A
// rounded to bf16, exact products) and with each other, per element, in the
// coordinator's verification measure |x − y| / (|x| + rms(row)): far inside
// its 1e-3 (coordinator.Config.VerifyKernelRel), so that volunteers on
// different CPUs agree. The measured worst is logged (go test -v).
func TestGemmBF16PathsAgree(t *testing.T) {
	const bound = 1e-4
	rng := rand.New(rand.NewPCG(41, 42))
	gauss := func(n int, sd float64) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64() * sd)
		}
		return x
	}
	worstRef, worstPair := 0.0, 0.0
	for _, s := range []struct{ m, n, k int }{
		{1, 4864, 896}, {1, 896, 4864}, {24, 4864, 896}, {24, 896, 4864}, {24, 128, 896}, {13, 896, 896},
	} {
		m, n, k := s.m, s.n, s.k
		a := gauss(m*k, 1)
		for i := 0; i < len(a); i += 97 { // a few outliers, as real activations have
			a[i] *= 20
		}
		bw := gauss(n*k, 0.02)
		bh := make([]uint16, len(bw))
		for i, v := range bw {
			bh[i] = F32ToBF16(v)
			bw[i] = BF16ToF32(bh[i])
		}
		ar := make([]float32, len(a))
		roundBF16F32Row(ar, a)
		ref, _ := gemmRef(false, true, m, n, k, 1, ar, k, bw, k, 0, nil, n)
		scale := make([]float64, m) // rms of each reference row
		for i := 0; i < m; i++ {
			var ss float64
			for _, v := range ref[i*n : (i+1)*n] {
				ss += v * v
			}
			scale[i] = math.Sqrt(ss / float64(n))
		}
		type result struct {
			name string
			c    []float32
		}
		var rs []result
		for _, ks := range gemmTestSets() {
			c := make([]float32, m*n)
			ks.gemmBF16(m, n, k, a, k, bh, k, c, n)
			rs = append(rs, result{ks.name + "/GemmBF16", c})
			if ks.bf16 != nil {
				pb := packBF16Panels(ks, nil, &gemmJob{transB: true, n: n, k: k, bh: bh, ldb: k}, packBBF16)
				c := make([]float32, m*n)
				GemmPacked(m, 1, a, k, pb, 0, c, n)
				rs = append(rs, result{ks.name + "/GemmPacked", c})
			}
		}
		rel := func(x, y float64, i, j int) float64 {
			return math.Abs(x-y) / (math.Abs(ref[i*n+j]) + scale[i])
		}
		for pi, r := range rs {
			for i := 0; i < m; i++ {
				for j := 0; j < n; j++ {
					d := rel(float64(r.c[i*n+j]), ref[i*n+j], i, j)
					if !(d <= bound) {
						t.Fatalf("%dx%dx%d %s: C[%d,%d] = %v, reference %v: %.3g > %g", m, n, k, r.name, i, j, r.c[i*n+j], ref[i*n+j], d, bound)
					}
					worstRef = max(worstRef, d)
					for _, q := range rs[:pi] {
						worstPair = max(worstPair, rel(float64(r.c[i*n+j]), float64(q.c[i*n+j]), i, j))
					}
				}
			}
		}
		if len(rs) < 2 {
			t.Fatalf("%dx%dx%d: %d paths", m, n, k, len(rs))
		}
		t.Logf("%s: %d paths", fmt.Sprintf("%dx%dx%d", m, n, k), len(rs))
	}
	t.Logf("worst |path − float64 reference| / (|ref| + rms(row)) = %.3g; worst between two paths %.3g (bound %g, coordinator 1e-3)", worstRef, worstPair, bound)
	if worstPair > bound {
		t.Errorf("paths differ by %.3g > %g", worstPair, bound)
	}
}

// TestRoundBF16F32Row checks roundBF16F32Row (its vector kernel where the
// CPU has one, the Go loop for the tail) bit for bit against the Go loop
// on every length up to 41 and on the values where rounding has cases:
// ties to even either way, the carry into the exponent, overflow to Inf,
// zeros, denormals, Inf and NaNs of both signs.
func TestRoundBF16F32Row(t *testing.T) {
	special := []uint32{
		0x3f808000, 0x3f818000, 0x3f817fff, 0x3f808001, // ties down and up, just below and above a tie
		0x3fffffff, 0x7f7fffff, 0xff7fffff, // the carry into the exponent; the largest finite rounds to Inf
		0x00000000, 0x80000000, 0x00000001, 0x807fffff, 0x00400000, // zeros and denormals
		0x00800000, 0x80800000, // the smallest normals
		0x7f800000, 0xff800000, // Inf
		0x7fc00000, 0xffc00001, 0x7f800001, 0xff812345, // quiet and signalling NaNs
	}
	// The reference itself: a tie with an odd kept bit rounds up, one with
	// an even kept bit down; a denormal becomes a zero of its sign.
	for in, want := range map[uint32]uint32{0x3f818000: 0x3f820000, 0x3f808000: 0x3f800000, 0x807fffff: 0x80000000, 0x7f800001: 0x7fc00000} {
		got := []float32{0}
		roundBF16F32RowGo(got, []float32{math.Float32frombits(in)})
		if b := math.Float32bits(got[0]); b != want {
			t.Fatalf("roundBF16F32RowGo(%#08x) = %#08x, want %#08x", in, b, want)
		}
	}
	rng := rand.New(rand.NewPCG(7, 1))
	for n := 0; n <= 41; n++ {
		src := make([]float32, n)
		for i := range src {
			switch rng.IntN(3) {
			case 0:
				src[i] = math.Float32frombits(special[rng.IntN(len(special))])
			case 1:
				src[i] = math.Float32frombits(rng.Uint32()) // any bit pattern
			default:
				src[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(9)-4)))
			}
		}
		got, want := make([]float32, n), make([]float32, n)
		roundBF16F32Row(got, src)
		roundBF16F32RowGo(want, src)
		for i := range src {
			if g, w := math.Float32bits(got[i]), math.Float32bits(want[i]); g != w {
				t.Fatalf("n=%d: value %d (%#08x) rounds to %#08x, want %#08x (the Go loop's)", n, i, math.Float32bits(src[i]), g, w)
			}
		}
	}
	if n := roundBF16F32Vec(make([]float32, 16), make([]float32, 16)); n != 0 && n != 16 {
		t.Fatalf("the vector kernel rounded %d of 16 values", n)
	} else {
		t.Logf("the vector kernel rounds %d of 16 values (0: none in this build or on this CPU)", n)
	}
}
