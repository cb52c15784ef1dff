package model

import (
	"carryon/internal/testenv"
	"carryon/tensor"
	"math"
	"math/rand/v2"
	"testing"
)

func TestSessionMatchesForward(t *testing.T) {
	const n = 90
	for _, arch := range []string{"qwen2", "qwen3", "llama"} {
		t.Run(arch, func(t *testing.T) {
			cfg := TinyConfig(arch)
			cfg.MaxPos = 128
			b := randomBase(t, cfg, 11)
			rng := rand.New(rand.NewPCG(3, 4))
			ids := make([]int32, n)
			for i := range ids {
				ids[i] = int32(rng.IntN(cfg.Vocab))
			}
			layers := []int{FinalLayer, 0, 1}
			want, err := b.Forward(ids, layers)
			if err != nil {
				t.Fatal(err)
			}
			s, err := b.NewSession(n, layers)
			if err != nil {
				t.Fatal(err)
			}
			got := make([][]float32, len(layers))
			for _, sp := range testenv.DecodeSplits(tensor.CachedAttentionRows, n) {
				var hs [][]float32
				if sp[1]-sp[0] == 1 {
					hs, err = s.Step(ids[sp[0]])
				} else {
					hs, err = s.Prefill(ids[sp[0]:sp[1]])
				}
				if err != nil {
					t.Fatal(err)
				}
				for i := range layers {
					if len(hs[i]) != (sp[1]-sp[0])*cfg.Dim {
						t.Fatalf("positions %v: layer %d has %d values", sp, layers[i], len(hs[i]))
					}
					got[i] = append(got[i], hs[i]...)
				}
			}
			if s.Len() != n {
				t.Errorf("Len = %d, want %d", s.Len(), n)
			}
			for i, l := range layers {
				worst := 0.0
				for p := 0; p < n; p++ {
					r := testenv.RowRel(got[i], want[i], p, cfg.Dim)
					worst = max(worst, r)
					if r > testenv.DecodeTol {
						t.Errorf("layer %d position %d: relative difference %.2e", l, p, r)
					}
				}
				t.Logf("layer %d: worst relative difference %.2e", l, worst)
			}
			if _, err := s.Step(1); err == nil {
				t.Error("Step past maxLen: no error")
			}
			if _, err := s.Prefill([]int32{int32(cfg.Vocab)}); err == nil {
				t.Error("token outside the vocabulary: no error")
			}
		})
	}
}

func TestArgmax(t *testing.T) {
	nan := float32(math.NaN())
	for _, tc := range []struct {
		x    []float32
		want int32
	}{
		{[]float32{1, 3, 2}, 1},
		{[]float32{3, 1, 3}, 0},           // first on ties
		{[]float32{nan, 2, nan, 5, 5}, 3}, // NaN never wins
		{[]float32{float32(math.Inf(-1)), float32(math.Inf(-1))}, 0},
	} {
		if got := Argmax(tc.x); got != tc.want {
			t.Errorf("Argmax(%v) = %d, want %d", tc.x, got, tc.want)
		}
	}
}

func TestSamplerDistribution(t *testing.T) {
	logits := []float32{2, 1, 0.5, -1, 3, float32(math.NaN())}
	const draws = 40000
	for _, tc := range []struct {
		temp float64
		topK int
	}{{1, 0}, {0.5, 0}, {2, 3}} {
		s, err := NewSampler(SampleOptions{Temperature: tc.temp, TopK: tc.topK, Seed: 77})
		if err != nil {
			t.Fatal(err)
		}
		// Expected: softmax(logits/temp) over the top-k finite logits.
		keep := []int{0, 1, 2, 3, 4}
		if tc.topK == 3 {
			keep = []int{4, 0, 1}
		}
		want := make([]float64, len(logits))
		var z float64
		for _, i := range keep {
			want[i] = math.Exp(float64(logits[i]) / tc.temp)
			z += want[i]
		}
		counts := make([]int, len(logits))
		for range draws {
			counts[s.Sample(logits)]++
		}
		for i := range logits {
			p := want[i] / z
			sd := math.Sqrt(p * (1 - p) / draws)
			got := float64(counts[i]) / draws
			if math.Abs(got-p) > 5*sd+1e-9 {
				t.Errorf("T=%v k=%d: token %d drawn %.4f of the time, want %.4f ± %.4f", tc.temp, tc.topK, i, got, p, 5*sd)
			}
		}
	}
	// Same seed, same draws; greedy is argmax.
	a, _ := NewSampler(SampleOptions{Temperature: 1, Seed: 5})
	b, _ := NewSampler(SampleOptions{Temperature: 1, Seed: 5})
	for i := range 100 {
		if x, y := a.Sample(logits), b.Sample(logits); x != y {
			t.Fatalf("draw %d: %d vs %d with equal seeds", i, x, y)
		}
	}
	g, _ := NewSampler(SampleOptions{Seed: 1})
	if g.Sample(logits) != 4 {
		t.Error("temperature 0 is not argmax")
	}
	if _, err := NewSampler(SampleOptions{Temperature: -1}); err == nil {
		t.Error("negative temperature accepted")
	}
}
