package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestDynamicMap pins the shape of bitsandbytes' dynamic map: 256 sorted
// values, 0 and 1 present, signed map symmetric with 127 negatives,
// smallest magnitude 10⁻⁶·0.55 (signed, the single fraction of the lowest
// decade) and 10⁻⁶·0.325 (unsigned, the first of two).
func TestDynamicMap(t *testing.T) {
	for _, signed := range []bool{true, false} {
		cm := dynamicMap(signed)
		neg, zero, one := 0, 0, 0
		for i, v := range cm {
			if i > 0 && !(cm[i-1] < v) {
				t.Fatalf("signed=%v: map not strictly increasing at %d: %g, %g", signed, i, cm[i-1], v)
			}
			switch {
			case v < 0:
				neg++
			case v == 0:
				zero++
			case v == 1:
				one++
			}
		}
		wantNeg, smallest := 0, float32(0.325e-6)
		if signed {
			wantNeg, smallest = 127, 0.55e-6
		}
		if neg != wantNeg || zero != 1 || one != 1 {
			t.Fatalf("signed=%v: %d negatives, %d zeros, %d ones", signed, neg, zero, one)
		}
		if got := cm[wantNeg+1]; math.Abs(float64(got-smallest)) > 1e-12 {
			t.Fatalf("signed=%v: smallest positive %g, want %g", signed, got, smallest)
		}
		if signed {
			for i := 0; i < 127; i++ {
				if cm[i] != -cm[254-i] {
					t.Fatalf("signed map not symmetric at %d: %g vs %g", i, cm[i], cm[254-i])
				}
			}
		}
	}
}

// TestAdamW8MatchesFloat runs 8-bit AdamW and float32 AdamW side by side
// for 200 steps (cosine learning rate) on a noisy quadratic (each block of parameters at its own
// scale, as a network's layers, and spread within it) and checks that the 8-bit
// trajectory stays close: the loss within 20% of the float path's at every
// step (measured: ≤ 14%, the loss being the squared distance still to go,
// a small difference of large moves) and the final parameters within 5%
// (relative L2; measured 2.3%), and that it trains (loss below a tenth).
func TestAdamW8MatchesFloat(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 3*AdamW8Block + 77
	target := make([]float32, n)
	for i := range target {
		// Each block at its own scale (like a layer), spread within it.
		scale := 0.3 * math.Pow(10, -float64(i/AdamW8Block))
		target[i] = float32(scale * rng.NormFloat64() * math.Exp(0.5*rng.NormFloat64()))
	}
	p32 := make([]float32, n)
	p8 := make([]float32, n)
	m, v := make([]float32, n), make([]float32, n)
	st := NewAdamW8State(n)
	g32, g8 := make([]float32, n), make([]float32, n)
	loss := func(p []float32) float64 {
		var s float64
		for i := range p {
			d := float64(p[i] - target[i])
			s += d * d
		}
		return s
	}
	l0 := loss(p32)
	worst := 0.0
	for step := 1; step <= 200; step++ {
		lr := CosineLR(step, 10, 200, 0.01, 0)
		for i := range p32 {
			noise := float32(rng.NormFloat64()) * 0.1 * float32(math.Abs(float64(target[i])))
			g32[i] = 2*(p32[i]-target[i]) + noise
			g8[i] = 2*(p8[i]-target[i]) + noise
		}
		AdamWStep(p32, g32, m, v, step, lr, 0.9, 0.999, 1e-8, 0.01)
		// Two calls at a block boundary, as a caller splitting work does.
		AdamW8Step(p8[:AdamW8Block], g8[:AdamW8Block], st, 0, step, lr, 0.9, 0.999, 1e-8, 0.01)
		AdamW8Step(p8[AdamW8Block:], g8[AdamW8Block:], st, AdamW8Block, step, lr, 0.9, 0.999, 1e-8, 0.01)
		a, b := loss(p32), loss(p8)
		worst = max(worst, math.Abs(a-b)/a)
	}
	l32, l8 := loss(p32), loss(p8)
	var dd, nn float64
	for i := range p32 {
		dd += float64(p8[i]-p32[i]) * float64(p8[i]-p32[i])
		nn += float64(p32[i]) * float64(p32[i])
	}
	rel := math.Sqrt(dd / nn)
	t.Logf("loss: start %.4g, float32 %.4g, 8-bit %.4g (largest relative gap over the steps %.3g); params rel L2 %.3g; state %d bytes vs %d", l0, l32, l8, worst, rel, st.Bytes(), 8*n)
	if !(l32 < l0/10) {
		t.Fatalf("float AdamW did not train: %g → %g", l0, l32)
	}
	if worst > 0.2 || rel > 0.05 || !(l8 < l0/10) {
		t.Fatalf("8-bit AdamW drifted: loss %g vs %g (largest gap %.3g), params rel L2 %.3g", l8, l32, worst, rel)
	}
	// One step from zero: the stored moments are (1−β1)·g and (1−β2)·g²
	// up to the map's rounding.
	st = NewAdamW8State(n)
	AdamW8Step(make([]float32, n), g8, st, 0, 1, 0.01, 0.9, 0.999, 1e-8, 0)
	dm, dv := make([]float32, n), make([]float32, n)
	st.Decode(dm, dv)
	var em, nm, ev, nv float64
	for i, g := range g8 {
		m1, v1 := 0.1*float64(g), 0.001*float64(g)*float64(g)
		em += (float64(dm[i]) - m1) * (float64(dm[i]) - m1)
		nm += m1 * m1
		ev += (float64(dv[i]) - v1) * (float64(dv[i]) - v1)
		nv += v1 * v1
	}
	if rm, rv := math.Sqrt(em/nm), math.Sqrt(ev/nv); rm > 0.02 || rv > 0.02 {
		t.Fatalf("8-bit moments after one step: rel L2 error m %.3g, v %.3g (want ≤ 0.02)", rm, rv)
	} else {
		t.Logf("8-bit moments after one step: rel L2 error m %.3g, v %.3g", rm, rv)
	}
}

// TestQuantizeNearest checks the map search against a linear scan.
func TestQuantizeNearest(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, signed := range []bool{true, false} {
		cm := dynamicMap(signed)
		for k := 0; k < 20000; k++ {
			x := float32(rng.Float64())
			if signed {
				x = 2*x - 1
			}
			if k%3 == 0 {
				x *= float32(math.Pow(10, -6*rng.Float64()))
			}
			best := 0
			for i := range cm {
				if math.Abs(float64(cm[i]-x)) < math.Abs(float64(cm[best]-x)) {
					best = i
				}
			}
			got := quantizeNearest(&cm, x)
			if math.Abs(float64(cm[got]-x)) != math.Abs(float64(cm[best]-x)) {
				t.Fatalf("signed=%v x=%g: got code %d (%g), nearest %d (%g)", signed, x, got, cm[got], best, cm[best])
			}
		}
	}
}
