package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// forEachExpPath runs f with the vector kernels (where this CPU has them)
// and with the portable loops.
func forEachExpPath(t *testing.T, f func(t *testing.T)) {
	old := expVector
	defer func() { expVector = old }()
	paths := []bool{false}
	if old {
		paths = append(paths, true)
	}
	for _, v := range paths {
		expVector = v
		name := "portable"
		if v {
			name = "vector"
		}
		t.Run(name, f)
	}
}

// TestExpSubSum sweeps expSubSum against math.Exp over the whole float32
// range of exp (relative error ≤ 3e-7, about 2.5 ulp), with slice lengths
// that leave every tail size, and checks the float64 sum and edge values.
func TestExpSubSum(t *testing.T) {
	forEachExpPath(t, func(t *testing.T) {
		var src []float32
		for x := float32(-87); x < 88.5; x += 0.0137 {
			src = append(src, x)
		}
		for _, m := range []float32{0, 3.5, -20} {
			for _, n := range []int{len(src), len(src) - 1, len(src) - 5, 7, 1} {
				s := src[len(src)-n:]
				dst := make([]float32, n)
				sum := expSubSum(dst, s, m)
				var want float64
				var worst float64
				for i, x := range s {
					w := math.Exp(float64(x - m))
					if x-m > 88.72283 {
						if !math.IsInf(float64(dst[i]), 1) {
							t.Fatalf("m=%v n=%d: exp(%v) = %v, want +Inf", m, n, x-m, dst[i])
						}
						want = math.Inf(1)
						continue
					}
					if x-m < -87.33654 {
						if dst[i] != 0 {
							t.Fatalf("m=%v n=%d: exp(%v) = %v, want 0", m, n, x-m, dst[i])
						}
						continue
					}
					want += float64(dst[i])
					worst = max(worst, math.Abs(float64(dst[i])-w)/w)
				}
				if worst > 3e-7 {
					t.Errorf("m=%v n=%d: max rel err %.3g > 3e-7", m, n, worst)
				}
				if sum != want && math.Abs(sum-want) > 1e-12*want {
					t.Errorf("m=%v n=%d: sum %v, Σ dst %v", m, n, sum, want)
				}
			}
		}
		nan := float32(math.NaN())
		in := []float32{float32(math.Inf(-1)), -200, 0, 100, float32(math.Inf(1)), nan, -87.3, 88.7, 1}
		out := make([]float32, len(in))
		expSubSum(out, in, 0)
		if out[0] != 0 || out[1] != 0 || out[2] != 1 || !math.IsInf(float64(out[3]), 1) || !math.IsInf(float64(out[4]), 1) ||
			out[5] == out[5] || out[6] <= 0 || math.IsInf(float64(out[7]), 0) || math.Abs(float64(out[8])-math.E) > 3e-7*math.E {
			t.Errorf("edge values %v -> %v", in, out)
		}
		// in place
		in = []float32{0, 1, 2}
		if s := expSubSum(in, in, 1); math.Abs(s-(1/math.E+1+math.E)) > 1e-6 || in[1] != 1 {
			t.Errorf("in place: %v, sum %v", in, s)
		}
	})
}

// TestSwiGLUSigmoidVector checks swiglu and sigmoidInto (forward of SwiGLU,
// SiLU and sigmoid) against float64 references over a wide range of inputs
// and every tail length, including saturation and in-place use.
func TestSwiGLUSigmoidVector(t *testing.T) {
	forEachExpPath(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		for _, n := range []int{0, 1, 7, 8, 9, 100, 1003} {
			g := make([]float32, n)
			u := make([]float32, n)
			for i := range g {
				g[i] = float32(rng.NormFloat64() * 6)
				u[i] = float32(rng.NormFloat64())
			}
			if n > 4 {
				g[0], g[1], g[2], g[3] = 100, -100, 0, -1e-30
			}
			sig := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
			out := make([]float32, n)
			swiglu(out, g, u)
			for i := range g {
				x := float64(g[i])
				w := x * sig(x) * float64(u[i])
				if d := math.Abs(float64(out[i]) - w); d > 6e-7*math.Abs(w)+1e-37 {
					t.Fatalf("n=%d swiglu(%v, %v) = %v, want %v", n, g[i], u[i], out[i], w)
				}
			}
			s := make([]float32, n)
			sigmoidInto(s, g, false)
			sl := append([]float32(nil), g...)
			sigmoidInto(sl, sl, true) // in place
			for i := range g {
				x := float64(g[i])
				if d := math.Abs(float64(s[i]) - sig(x)); d > 4e-7*sig(x)+1e-37 {
					t.Fatalf("n=%d sigmoid(%v) = %v, want %v", n, x, s[i], sig(x))
				}
				if w := x * sig(x); math.Abs(float64(sl[i])-w) > 5e-7*math.Abs(w)+1e-37 {
					t.Fatalf("n=%d silu(%v) = %v, want %v", n, x, sl[i], w)
				}
			}
		}
	})
}

// TestExpVectorMatchesPortable checks that the two paths agree to 1 ulp
// on random inputs (they share the algorithm).
func TestExpVectorMatchesPortable(t *testing.T) {
	if !expVector {
		t.Skip("no vector kernels on this CPU/build")
	}
	rng := rand.New(rand.NewPCG(7, 8))
	src := make([]float32, 4099)
	for i := range src {
		src[i] = float32(rng.Float64()*170 - 85)
	}
	vec := make([]float32, len(src))
	expSubSum(vec, src, 0)
	defer func() { expVector = true }()
	expVector = false
	sc := make([]float32, len(src))
	expSubSum(sc, src, 0)
	for i := range src {
		d := int64(math.Float32bits(vec[i])) - int64(math.Float32bits(sc[i]))
		if d < -1 || d > 1 {
			t.Fatalf("exp(%v): vector %v, portable %v", src[i], vec[i], sc[i])
		}
	}
}

func BenchmarkExpSubSum(b *testing.B) {
	src := make([]float32, 32000)
	for i := range src {
		src[i] = float32(i%200) * -0.05
	}
	dst := make([]float32, len(src))
	for b.Loop() {
		expSubSum(dst, src, 0.5)
	}
	b.SetBytes(int64(4 * len(src)))
}

// TestMaxScale checks maxOf and scaleBy against plain loops for every tail
// length, with the maximum at every position class.
func TestMaxScale(t *testing.T) {
	forEachExpPath(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(9, 9))
		for n := 1; n < 40; n++ {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
			for _, at := range []int{0, n / 2, n - 1} {
				x[at] = 50 + float32(at)
				want := x[0]
				for _, v := range x {
					want = max(want, v)
				}
				if got := maxOf(x); got != want {
					t.Fatalf("n=%d: maxOf = %v, want %v", n, got, want)
				}
			}
			y := append([]float32(nil), x...)
			scaleBy(y, 0.37)
			for i := range x {
				if y[i] != x[i]*0.37 {
					t.Fatalf("n=%d: scaleBy[%d] = %v, want %v", n, i, y[i], x[i]*0.37)
				}
			}
		}
	})
}
