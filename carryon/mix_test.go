package carryon

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"carryon/internal/testenv"
	"carryon/model"
	"carryon/tensor"
)

// mixBases are two random bases that read the same token ids: the primary
// (width 32, 2 layers) and a second of another width and depth (48, 3),
// each with its own weights hash.
func mixBases(t *testing.T) (b, b2 *model.Base) {
	t.Helper()
	cfg := model.TinyConfig("qwen2")
	cfg.EOS = -1 // generate the full length
	b, err := model.NewRandomBase(cfg, 21)
	if err != nil {
		t.Fatal(err)
	}
	b.WeightsHash = testHash("carryon mix primary")
	cfg2 := cfg
	cfg2.Dim, cfg2.Layers, cfg2.Heads, cfg2.HeadDim, cfg2.FFN = 48, 3, 4, 12, 40
	b2, err = model.NewRandomBase(cfg2, 22)
	if err != nil {
		t.Fatal(err)
	}
	b2.WeightsHash = testHash("carryon mix second")
	return b, b2
}

func testHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// mixStage is a random carry-on on b reading the given sources
// (source 0 is b's final hidden state).
func mixStage(t *testing.T, b *model.Base, seed uint64, src ...Source) *Model {
	t.Helper()
	c := DefaultConfig(b.Config.Dim, b.Config.Vocab)
	c.Width, c.Heads, c.FFN, c.MaxSeq = 16, 2, 24, 64
	c.Sources = append(c.Sources, src...)
	return randomCarryOn(t, c, seed)
}

// TestMixGenerate: a chain whose stages read a second base (its final
// hidden states and a middle layer) generates with one key/value cache
// per base, in lockstep, what ForwardStages computes over the whole
// sequence, and ForwardStages is the carry-on applied by hand to both
// bases' (bridged) hidden states, in the adaptor's source order.
func TestMixGenerate(t *testing.T) {
	b, b2 := mixBases(t)
	D, D2 := b.Config.Dim, b2.Config.Dim
	s1 := mixStage(t, b, 31, Source{Name: MixSourceName(b2.WeightsHash, model.FinalLayer), Dim: D2}, Source{Name: "layer:1", Dim: D})
	s2 := mixStage(t, b, 32, Source{Name: MixSourceName(b2.WeightsHash, 2), Dim: D2})
	stages := []*Model{s1, s2}
	prompt := []int32{1, 7, 3, 49, 22, 22, 0, 13}
	const steps, alpha = 20, float32(0.75)
	for _, bridge := range []string{"", "q8"} {
		t.Run("bridge="+bridge, func(t *testing.T) {
			var seen []float32 // the logits of every position but the last, in order
			gen, stopped, err := GenerateIDs(b, stages, alpha, prompt, GenerateOptions{MaxTokens: steps, Bridge: bridge, Mix: []*model.Base{b2},
				OnPromptLogits: func(i int, l []float32) { seen = append(seen, l...) },
				OnLogits:       func(l []float32) { seen = append(seen, l...) }})
			if err != nil {
				t.Fatal(err)
			}
			if stopped || len(gen) != steps {
				t.Fatalf("generated %d tokens (stopped %v), want %d", len(gen), stopped, steps)
			}
			ids := append(append([]int32(nil), prompt...), gen...)
			T := len(ids)
			x, y, err := ForwardStages(b, stages, alpha, ids, bridge, b2)
			if err != nil {
				t.Fatal(err)
			}
			// (1) The incremental path's logits are the whole sequence's.
			V := b.Config.Vocab
			full := b.Logits(y, T)
			if len(seen) != (T-1)*V {
				t.Fatalf("saw logits of %d positions, want %d", len(seen)/V, T-1)
			}
			worst := 0.0
			for p := 0; p < T-1; p++ {
				r := testenv.RowRel(seen, full, p, V)
				worst = max(worst, r)
				if r > 1e-4 {
					t.Errorf("position %d: generation logits differ from ForwardStages' by %.2e (relative)", p, r)
				}
				if p >= len(prompt)-1 && model.Argmax(full[p*V:(p+1)*V]) != ids[p+1] {
					t.Errorf("position %d: greedy token %d, the whole sequence's argmax %d", p, ids[p+1], model.Argmax(full[p*V:(p+1)*V]))
				}
			}
			t.Logf("worst relative difference of the logits %.2e", worst)

			// (2) ForwardStages is the chain applied to both bases' hidden
			// states, each through the bridge, in each adaptor's order.
			hs, err := b.Forward(ids, []int{model.FinalLayer, 1})
			if err != nil {
				t.Fatal(err)
			}
			hs2, err := b2.Forward(ids, []int{model.FinalLayer, 2})
			if err != nil {
				t.Fatal(err)
			}
			if bridge != "" {
				bridgeRows(t, bridge, hs, T, D)
				bridgeRows(t, bridge, hs2, T, D2)
			}
			y1 := append([]float32(nil), s1.Forward(s1.NewWorkspace(T), [][]float32{hs[0], hs2[0], hs[1]}, T, alpha)...)
			want := s2.Forward(s2.NewWorkspace(T), [][]float32{y1, hs2[1]}, T, alpha)
			for p := 0; p < T; p++ {
				if r := testenv.RowRel(y, want, p, D); r > testenv.DecodeTol {
					t.Errorf("ForwardStages position %d: relative difference %.2e from the chain by hand", p, r)
				}
			}
			if testenv.MaxRel(x, hs[0]) != 0 {
				t.Error("ForwardStages: x is not the primary base's final hidden state")
			}
			// The second base matters: without its sources' values (zeros
			// in their place) the output differs.
			zero := make([]float32, T*D2)
			y1z := append([]float32(nil), s1.Forward(s1.NewWorkspace(T), [][]float32{hs[0], zero, hs[1]}, T, alpha)...)
			if d := testenv.MaxRel(y1z, y1); d < 1e-3 {
				t.Errorf("the second base changes the first stage's output by only %.2e: the test does not exercise it", d)
			}
		})
	}
}

// bridgeRows round-trips each (T, D) hidden state of hs through codec.
func bridgeRows(t *testing.T, codec string, hs [][]float32, T, D int) {
	t.Helper()
	cd, err := tensor.ParseCodec(codec)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if err := cd.Decode(h, cd.Encode(nil, h, T, D), T, D); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMixRefused: a mixture's second base that is missing, another base,
// or one with another vocabulary is refused with an error that names the
// base; a given base that no stage reads is refused by CheckMix.
func TestMixRefused(t *testing.T) {
	b, b2 := mixBases(t)
	name := MixSourceName(b2.WeightsHash, model.FinalLayer)
	st := mixStage(t, b, 31, Source{Name: name, Dim: b2.Config.Dim})
	short := b2.WeightsHash[:MixHashLen]
	other, err := model.NewRandomBase(b2.Config, 5)
	if err != nil {
		t.Fatal(err)
	}
	other.WeightsHash = testHash("another base")
	vcfg := b2.Config
	vcfg.Vocab++
	wrongVocab, err := model.NewRandomBase(vcfg, 6)
	if err != nil {
		t.Fatal(err)
	}
	wrongVocab.WeightsHash = b2.WeightsHash
	narrow := mixStage(t, b, 31, Source{Name: name, Dim: b2.Config.Dim + 1})
	deep := mixStage(t, b, 31, Source{Name: MixSourceName(b2.WeightsHash, 9), Dim: b2.Config.Dim})
	for _, c := range []struct {
		name  string
		stage *Model
		mix   []*model.Base
		want  []string
	}{
		{"missing", st, nil, []string{"reads base " + short, "was not given", "--mix"}},
		{"another base", st, []*model.Base{other}, []string{"reads base " + short, "was not given"}},
		{"another vocabulary", st, []*model.Base{wrongVocab}, []string{"vocabulary of 51 tokens, the base 50", "one tokenizer"}},
		{"twice", st, []*model.Base{b2, b2}, []string{"given twice"}},
		{"width", narrow, []*model.Base{b2}, []string{"has width 49, its base 48"}},
		{"layer", deep, []*model.Base{b2}, []string{"mixed base " + short, "layer:0..3"}},
	} {
		_, _, gerr := GenerateIDs(b, []*Model{c.stage}, 1, []int32{1, 2}, GenerateOptions{MaxTokens: 2, Mix: c.mix})
		_, _, ferr := ForwardStages(b, []*Model{c.stage}, 1, []int32{1, 2}, "", c.mix...)
		for _, err := range []error{gerr, ferr} {
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("%s: error %v, want one saying %q", c.name, err, w)
				}
			}
		}
	}
	if _, _, err := StageLayers(b, []*Model{st}); err == nil || !strings.Contains(err.Error(), "was not given") {
		t.Errorf("StageLayers of a mixture: %v, want a refusal naming the missing base", err)
	}
	if err := CheckMix(b, []*model.Base{b2}, []*Model{st}); err != nil {
		t.Errorf("CheckMix of the right base: %v", err)
	}
	plain := mixStage(t, b, 33)
	for _, c := range []struct {
		stages []*Model
		mix    []*model.Base
		want   string
	}{
		{[]*Model{plain}, []*model.Base{b2}, "is not a source of the adaptors: they read the base alone"},
		{[]*Model{st}, []*model.Base{b2, other}, "mixed base " + other.WeightsHash[:MixHashLen] + " is not a source of the adaptors: they read the bases " + short},
	} {
		if err := CheckMix(b, c.mix, c.stages); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CheckMix: %v, want an error saying %q", err, c.want)
		}
	}
}
