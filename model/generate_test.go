package model

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// genTol bounds the per-position relative difference between incremental
// and full forwards: both run in float32 and differ only in the order of
// the attention sums (measured: a few 1e-7).
const genTol = 1e-5

// rowRel is maxRel of row t of two (T, d) matrices.
func rowRel(a, b []float32, t, d int) float64 {
	return maxRel(a[t*d:(t+1)*d], b[t*d:(t+1)*d])
}

// splits feeds a sequence of n tokens as: a prefill from 0, a prefill of
// more than attnRowBlock rows on top of it, then single steps.
func splits(n int) [][2]int {
	out := [][2]int{{0, 5}, {5, 5 + attnRowBlock + 6}}
	for i := out[1][1]; i < n; i++ {
		out = append(out, [2]int{i, i + 1})
	}
	return out
}

func TestSessionMatchesForward(t *testing.T) {
	const n = 90
	for _, arch := range []string{"qwen2", "qwen3", "llama"} {
		t.Run(arch, func(t *testing.T) {
			cfg := tinyConfig(arch)
			cfg.MaxPos = 128
			b, err := NewRandomBase(cfg, 11)
			if err != nil {
				t.Fatal(err)
			}
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
			for _, sp := range splits(n) {
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
					r := rowRel(got[i], want[i], p, cfg.Dim)
					worst = max(worst, r)
					if r > genTol {
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

// randomCarryOn returns a carry-on for base width D and vocab V with every
// parameter drawn off its initialisation (W_Δ ≠ 0), so that its output
// depends on every part of the network.
func randomCarryOn(t *testing.T, cfg CarryOnConfig, seed uint64) *CarryOn {
	t.Helper()
	c, err := NewCarryOn(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 9))
	for _, ten := range c.Tensors() {
		p := c.Params[ten.Offset : ten.Offset+ten.Numel()]
		for i := range p {
			if strings.HasSuffix(ten.Name, "norm.weight") {
				p[i] = float32(1 + 0.2*rng.NormFloat64())
			} else {
				p[i] = float32(0.3 * rng.NormFloat64())
			}
		}
	}
	return c
}

func TestCarryOnSessionMatchesForward(t *testing.T) {
	const n = 90
	cfg := coTinyConfig(11)
	cfg.MaxSeq = n
	c := randomCarryOn(t, cfg, 5)
	rng := rand.New(rand.NewPCG(6, 7))
	var sources [][]float32
	for _, s := range cfg.Sources {
		x := make([]float32, n*s.Dim)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		sources = append(sources, x)
	}
	alpha := float32(0.75)
	want := append([]float32(nil), c.Forward(c.NewWorkspace(n), sources, n, alpha)...)
	s, err := c.NewSession(n)
	if err != nil {
		t.Fatal(err)
	}
	D := cfg.D()
	var got []float32
	for _, sp := range splits(n) {
		T := sp[1] - sp[0]
		src := make([][]float32, len(sources))
		for i, x := range sources {
			d := cfg.Sources[i].Dim
			src[i] = x[sp[0]*d : sp[1]*d]
		}
		var y []float32
		if T == 1 {
			y, err = s.Step(src, alpha)
		} else {
			y, err = s.Prefill(src, T, alpha)
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, y...)
	}
	worst := 0.0
	for p := 0; p < n; p++ {
		r := rowRel(got, want, p, D)
		worst = max(worst, r)
		if r > genTol {
			t.Errorf("position %d: relative difference %.2e", p, r)
		}
	}
	t.Logf("worst relative difference %.2e", worst)
	// The carry-on really changes y (so the comparison is not of x̂ alone).
	if d := maxRel(want, sources[0]); d < 0.01 {
		t.Errorf("y differs from x̂ by only %.2e: the test does not exercise the trunk", d)
	}
	if _, err := s.Step([][]float32{sources[0][:D]}, alpha); err == nil {
		t.Error("Step with one source missing: no error")
	}
}

// greedyReference generates by recomputing the full forward for every
// token: base hidden states, the stages applied in order (stage i's
// primary source is stage i-1's output), then argmax of W_pred·y at the
// last position.
func greedyReference(t *testing.T, b *Base, stages []*CarryOn, alpha float32, prompt []int32, steps int, stop int32) []int32 {
	t.Helper()
	ids := append([]int32(nil), prompt...)
	var gen []int32
	for range steps {
		T := len(ids)
		hs, err := b.Forward(ids, []int{FinalLayer, 1})
		if err != nil {
			t.Fatal(err)
		}
		y := hs[0]
		for _, st := range stages {
			src := [][]float32{y}
			if len(st.Config.Sources) > 1 {
				src = append(src, hs[1])
			}
			y = append([]float32(nil), st.Forward(st.NewWorkspace(T), src, T, alpha)...)
		}
		logits := b.Logits(y, T)
		id := Argmax(logits[(T-1)*b.Config.Vocab:])
		if id == stop {
			break
		}
		gen = append(gen, id)
		ids = append(ids, id)
	}
	return gen
}

func TestGreedyGenerateMatchesFullForward(t *testing.T) {
	cfg := tinyConfig("qwen2")
	cfg.EOS = -1 // generate the full length
	b, err := NewRandomBase(cfg, 21)
	if err != nil {
		t.Fatal(err)
	}
	prompt := []int32{1, 7, 3, 49, 22, 22, 0, 13}
	const steps = 24
	stage := func(seed uint64, shortcut bool) *CarryOn {
		c := DefaultCarryOnConfig(cfg.Dim, cfg.Vocab)
		c.Width, c.Heads, c.FFN, c.MaxSeq = 16, 2, 24, 64
		if shortcut {
			c.Sources = append(c.Sources, Source{Name: "layer:1", Dim: cfg.Dim})
		}
		return randomCarryOn(t, c, seed)
	}
	s1, s2 := stage(31, false), stage(32, true)
	for _, tc := range []struct {
		name   string
		stages []*CarryOn
		alpha  float32
	}{
		{"base", nil, 1},
		{"one stage", []*CarryOn{s1}, 1},
		{"two stages with a shortcut", []*CarryOn{s1, s2}, 0.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := greedyReference(t, b, tc.stages, tc.alpha, prompt, steps, -1)
			got, stopped, err := GenerateIDs(b, tc.stages, tc.alpha, prompt, GenerateOptions{MaxTokens: steps})
			if err != nil {
				t.Fatal(err)
			}
			if stopped || len(got) != steps {
				t.Fatalf("generated %d tokens (stopped %v), want %d", len(got), stopped, steps)
			}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("token %d: got %d, full-forward argmax %d\n got  %v\n want %v", i, got[i], want[i], got, want)
				}
			}
		})
	}
	// The stages change what is generated (else the comparison above
	// could not tell them apart from the base).
	base := greedyReference(t, b, nil, 1, prompt, steps, -1)
	with := greedyReference(t, b, []*CarryOn{s1, s2}, 0.5, prompt, steps, -1)
	if equalIDs(base, with) {
		t.Error("the carry-on stages do not change the greedy output")
	}

	// ForwardStages is the same chain over a whole sequence.
	ids := append(append([]int32(nil), prompt...), with...)
	T := len(ids)
	hs, err := b.Forward(ids, []int{FinalLayer, 1})
	if err != nil {
		t.Fatal(err)
	}
	y1 := append([]float32(nil), s1.Forward(s1.NewWorkspace(T), [][]float32{hs[0]}, T, 0.5)...)
	y2 := s2.Forward(s2.NewWorkspace(T), [][]float32{y1, hs[1]}, T, 0.5)
	x, y, err := ForwardStages(b, []*CarryOn{s1, s2}, 0.5, ids, "")
	if err != nil {
		t.Fatal(err)
	}
	for p := 0; p < T; p++ {
		if r := rowRel(y, y2, p, cfg.Dim); r > genTol {
			t.Errorf("ForwardStages position %d: relative difference %.2e", p, r)
		}
	}
	if maxRel(x, hs[0]) != 0 {
		t.Error("ForwardStages: x is not the base's final hidden state")
	}

	// A stop token ends generation and is not returned.
	stopAt := base[5]
	got, stopped, err := GenerateIDs(b, nil, 1, prompt, GenerateOptions{MaxTokens: steps, Stop: []int32{stopAt}})
	if err != nil {
		t.Fatal(err)
	}
	want := greedyReference(t, b, nil, 1, prompt, steps, stopAt)
	if !stopped || !equalIDs(got, want) {
		t.Errorf("with stop token %d: got %v (stopped %v), want %v", stopAt, got, stopped, want)
	}
}

func equalIDs(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestGenerateRejectsMismatchedStages(t *testing.T) {
	cfg := tinyConfig("llama")
	b, err := NewRandomBase(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	good := DefaultCarryOnConfig(cfg.Dim, cfg.Vocab)
	for _, tc := range []struct {
		name string
		edit func(*CarryOnConfig)
		want string
	}{
		{"vocab", func(c *CarryOnConfig) { c.Vocab++ }, "vocabulary"},
		{"width", func(c *CarryOnConfig) { c.Sources[0].Dim++ }, "width"},
		{"unknown source", func(c *CarryOnConfig) { c.Sources = append(c.Sources, Source{Name: "layer:9", Dim: cfg.Dim}) }, "layer:9"},
		{"final as shortcut", func(c *CarryOnConfig) { c.Sources[0].Name = "layer:1" }, "first source"},
	} {
		c := good
		c.Sources = append([]Source(nil), good.Sources...)
		tc.edit(&c)
		co, err := NewCarryOn(c, 1)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = GenerateIDs(b, []*CarryOn{co}, 1, []int32{1, 2}, GenerateOptions{MaxTokens: 2})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "stage 0") {
			t.Errorf("%s: error %v, want one naming stage 0 and %q", tc.name, err, tc.want)
		}
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
		s, err := NewSampler(tc.temp, tc.topK, 77)
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
	a, _ := NewSampler(1, 0, 5)
	b, _ := NewSampler(1, 0, 5)
	for i := range 100 {
		if x, y := a.Sample(logits), b.Sample(logits); x != y {
			t.Fatalf("draw %d: %d vs %d with equal seeds", i, x, y)
		}
	}
	g, _ := NewSampler(0, 0, 1)
	if g.Sample(logits) != 4 {
		t.Error("temperature 0 is not argmax")
	}
	if _, err := NewSampler(-1, 0, 1); err == nil {
		t.Error("negative temperature accepted")
	}
}
