package carryon

import (
	"carryon/internal/testenv"
	"carryon/model"
	"carryon/tensor"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// randomCarryOn returns a carry-on for base width D and vocab V with every
// parameter drawn off its initialisation (W_Δ ≠ 0), so that its output
// depends on every part of the network.
func randomCarryOn(t *testing.T, cfg Config, seed uint64) *Model {
	t.Helper()
	c, err := New(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	randomizeParams(c, rand.New(rand.NewPCG(seed, 9)), 0.3)
	return c
}

// randomizeParams draws every parameter of c off its initialisation: norm
// weights around 1 (±0.2), the rest Gaussian with deviation std.
func randomizeParams(c *Model, rng *rand.Rand, std float64) {
	for _, ten := range c.Tensors() {
		p := c.Params[ten.Offset : ten.Offset+ten.Numel()]
		for i := range p {
			if strings.HasSuffix(ten.Name, "norm.weight") {
				p[i] = float32(1 + 0.2*rng.NormFloat64())
			} else {
				p[i] = float32(std * rng.NormFloat64())
			}
		}
	}
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
	for _, sp := range testenv.DecodeSplits(tensor.CachedAttentionRows, n) {
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
		r := testenv.RowRel(got, want, p, D)
		worst = max(worst, r)
		if r > testenv.DecodeTol {
			t.Errorf("position %d: relative difference %.2e", p, r)
		}
	}
	t.Logf("worst relative difference %.2e", worst)
	// The carry-on really changes y (so the comparison is not of x̂ alone).
	if d := testenv.MaxRel(want, sources[0]); d < 0.01 {
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
func greedyReference(t *testing.T, b *model.Base, stages []*Model, alpha float32, prompt []int32, steps int, stop int32) []int32 {
	t.Helper()
	ids := append([]int32(nil), prompt...)
	var gen []int32
	for range steps {
		T := len(ids)
		hs, err := b.Forward(ids, []int{model.FinalLayer, 1})
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
		id := model.Argmax(logits[(T-1)*b.Config.Vocab:])
		if id == stop {
			break
		}
		gen = append(gen, id)
		ids = append(ids, id)
	}
	return gen
}

func TestGreedyGenerateMatchesFullForward(t *testing.T) {
	cfg := model.TinyConfig("qwen2")
	cfg.EOS = -1 // generate the full length
	b, err := model.NewRandomBase(cfg, 21)
	if err != nil {
		t.Fatal(err)
	}
	prompt := []int32{1, 7, 3, 49, 22, 22, 0, 13}
	const steps = 24
	stage := func(seed uint64, shortcut bool) *Model {
		c := DefaultConfig(cfg.Dim, cfg.Vocab)
		c.Width, c.Heads, c.FFN, c.MaxSeq = 16, 2, 24, 64
		if shortcut {
			c.Sources = append(c.Sources, Source{Name: "layer:1", Dim: cfg.Dim})
		}
		return randomCarryOn(t, c, seed)
	}
	s1, s2 := stage(31, false), stage(32, true)
	for _, tc := range []struct {
		name   string
		stages []*Model
		alpha  float32
	}{
		{"base", nil, 1},
		{"one stage", []*Model{s1}, 1},
		{"two stages with a shortcut", []*Model{s1, s2}, 0.5},
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
	with := greedyReference(t, b, []*Model{s1, s2}, 0.5, prompt, steps, -1)
	if equalIDs(base, with) {
		t.Error("the carry-on stages do not change the greedy output")
	}

	// ForwardStages is the same chain over a whole sequence.
	ids := append(append([]int32(nil), prompt...), with...)
	T := len(ids)
	hs, err := b.Forward(ids, []int{model.FinalLayer, 1})
	if err != nil {
		t.Fatal(err)
	}
	y1 := append([]float32(nil), s1.Forward(s1.NewWorkspace(T), [][]float32{hs[0]}, T, 0.5)...)
	y2 := s2.Forward(s2.NewWorkspace(T), [][]float32{y1, hs[1]}, T, 0.5)
	x, y, err := ForwardStages(b, []*Model{s1, s2}, 0.5, ids, "")
	if err != nil {
		t.Fatal(err)
	}
	for p := 0; p < T; p++ {
		if r := testenv.RowRel(y, y2, p, cfg.Dim); r > testenv.DecodeTol {
			t.Errorf("ForwardStages position %d: relative difference %.2e", p, r)
		}
	}
	if testenv.MaxRel(x, hs[0]) != 0 {
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
	cfg := model.TinyConfig("llama")
	b, err := model.NewRandomBase(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	good := DefaultConfig(cfg.Dim, cfg.Vocab)
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"vocab", func(c *Config) { c.Vocab++ }, "vocabulary"},
		{"width", func(c *Config) { c.Sources[0].Dim++ }, "width"},
		{"unknown source", func(c *Config) { c.Sources = append(c.Sources, Source{Name: "layer:9", Dim: cfg.Dim}) }, "layer:9"},
		{"final as shortcut", func(c *Config) { c.Sources[0].Name = "layer:1" }, "first source"},
	} {
		c := good
		c.Sources = append([]Source(nil), good.Sources...)
		tc.edit(&c)
		co, err := New(c, 1)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = GenerateIDs(b, []*Model{co}, 1, []int32{1, 2}, GenerateOptions{MaxTokens: 2})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "stage 0") {
			t.Errorf("%s: error %v, want one naming stage 0 and %q", tc.name, err, tc.want)
		}
	}
}

// TestResolveChain checks the one place adaptors are checked against a
// base: a missing or wrong base hash is refused, parents are loaded root
// first, and stages listed out of order are refused.
func TestResolveChain(t *testing.T) {
	cfg := model.TinyConfig("qwen2")
	b, err := model.NewRandomBase(cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	b.WeightsHash = "sha256:test-base" // a random base has no files to hash
	files := map[string][]byte{}
	put := func(name string, meta Meta) {
		c := DefaultConfig(cfg.Dim, cfg.Vocab)
		c.Width, c.Heads, c.FFN, c.MaxSeq = 16, 2, 24, 64
		data, err := randomCarryOn(t, c, 7).Marshal(meta)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = data
	}
	get := func(id string) ([]byte, error) {
		if d, ok := files[id]; ok {
			return d, nil
		}
		return nil, fmt.Errorf("%s: not found", id)
	}
	put("root", Meta{BaseHash: b.WeightsHash})
	put("stage2", Meta{BaseHash: b.WeightsHash, Parent: "root"})
	put("nohash", Meta{})
	put("other", Meta{BaseHash: "sha256:other"})
	put("orphan", Meta{BaseHash: b.WeightsHash, Parent: "missing"})

	chain, err := ResolveChain("stage2", get, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[0].CID != "root" || chain[1].CID != "stage2" {
		t.Fatalf("chain %v, want root then stage2", chain)
	}
	if err := CheckOrder(chain); err != nil {
		t.Errorf("CheckOrder of a resolved chain: %v", err)
	}
	if err := CheckOrder([]Stage{chain[1], chain[0]}); err == nil {
		t.Errorf("CheckOrder accepted a stage before its parent")
	}
	for id, want := range map[string]string{"nohash": "does not say which base", "other": "trained on base", "orphan": "on top of missing"} {
		if _, err := ResolveChain(id, get, b); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", id, err, want)
		}
	}
}

// TestStageLayerNames: the source names of one base, and a clear refusal
// of a mixed base's source when that base is not given.
func TestStageLayerNames(t *testing.T) {
	for _, c := range []struct {
		name string
		want int
		err  string
	}{
		{"final", model.FinalLayer, ""},
		{"layer:0", 0, ""},
		{"layer:4", 4, ""},
		{"layer:5", 0, "not one this base provides (final, layer:0..4)"},
		{"base:0123456789abcdef:final", 0, "reads base 0123456789abcdef, which was not given (no further base was given): this adaptor is a mixture of bases"},
	} {
		cfg := model.TinyConfig("llama")
		cfg.Layers = 4
		got, err := resolveLayer(c.name, cfg)
		if c.err == "" && (err != nil || got != c.want) {
			t.Errorf("resolveSource(%q) = %d, %v; want %d", c.name, got, err, c.want)
		}
		if c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("resolveSource(%q): %v, want an error saying %q", c.name, err, c.err)
		}
	}
}

// resolveLayer resolves name against a base of shape cfg alone.
func resolveLayer(name string, cfg model.Config) (int, error) {
	_, l, err := resolveSource(name, &model.Base{Config: cfg}, nil)
	return l, err
}
