package serve

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"carryon/carryon"
	"carryon/model"
	"carryon/tokenizer"
)

// mixAdaptor returns a second base (another width and depth, the byte
// vocabulary) and an adaptor for b that reads its final hidden states
// beside b's own (a mixture of bases), with a random W_Δ and source
// projections.
func mixAdaptor(t *testing.T, b *model.Base) (*model.Base, []byte, *carryon.Model) {
	t.Helper()
	cfg := b.Config
	cfg.Dim, cfg.Layers, cfg.HeadDim, cfg.FFN = 48, 1, 24, 40
	b2, err := model.NewRandomBase(cfg, 8)
	if err != nil {
		t.Fatal(err)
	}
	b2.WeightsHash = "f00d" + strings.Repeat("5e", 30)
	cc := carryon.DefaultConfig(b.Config.Dim, b.Config.Vocab)
	cc.Width, cc.Layers, cc.Heads, cc.FFN, cc.MaxSeq = 16, 1, 2, 44, 256
	cc.Sources = append(cc.Sources, carryon.Source{Name: carryon.MixSourceName(b2.WeightsHash, model.FinalLayer), Dim: 48})
	co, err := carryon.New(cc, 5)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 99))
	for i := range co.Params {
		co.Params[i] += float32(0.2 * rng.NormFloat64())
	}
	data, err := co.Marshal(carryon.Meta{BaseHash: tinyHash, Step: 3})
	if err != nil {
		t.Fatal(err)
	}
	return b2, data, co
}

// TestMixAdaptor: a server given the second base of a mixture serves the
// mixture adaptor as carryon.GenerateIDs runs it (both bases in
// lockstep); without that base the adaptor is refused, naming the base; a
// second base of another vocabulary is refused at New.
func TestMixAdaptor(t *testing.T) {
	b := tinyBase(t, 128)
	b2, data, co := mixAdaptor(t, b)
	s, hs := newServer(t, Config{Base: b, Mix: []*model.Base{b2}})
	if _, err := s.Add(context.Background(), "mix", data); err != nil {
		t.Fatal(err)
	}
	const prompt = "Once upon"
	want, _, err := carryon.GenerateIDs(b, []*carryon.Model{co}, 1, promptIDs(prompt), carryon.GenerateOptions{MaxTokens: 20, Stop: []int32{tokenizer.ByteTokEOS}, Mix: []*model.Base{b2}})
	if err != nil {
		t.Fatal(err)
	}
	r := completion(t, hs.URL, map[string]any{"model": "mix", "prompt": prompt, "max_tokens": 20, "temperature": 0})
	if got := r.Choices[0].Text; got != (tokenizer.ByteTokenizer{}).Decode(want) {
		t.Errorf("mixture: %q, carryon.GenerateIDs with both bases gives %q", got, (tokenizer.ByteTokenizer{}).Decode(want))
	}
	// The second base changes the answer (its source is not ignored).
	co0, _, err := carryon.Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ten := range co0.Tensors() {
		if strings.HasPrefix(ten.Name, "src.1.") {
			clear(co0.Params[ten.Offset : ten.Offset+ten.Numel()])
			found = true
		}
	}
	if !found {
		t.Fatal("no tensor of source 1 (src.1.*) in the carry-on")
	}
	without, _, err := carryon.GenerateIDs(b, []*carryon.Model{co0}, 1, promptIDs(prompt), carryon.GenerateOptions{MaxTokens: 20, Stop: []int32{tokenizer.ByteTokEOS}, Mix: []*model.Base{b2}})
	if err != nil {
		t.Fatal(err)
	}
	if (tokenizer.ByteTokenizer{}).Decode(without) == r.Choices[0].Text {
		t.Error("the mixture answers as without its second source: the test does not exercise the second base")
	}

	s0, _ := newServer(t, Config{Base: b})
	if _, err := s0.Add(context.Background(), "mix", data); !errors.Is(err, ErrInvalidAdaptor) || !strings.Contains(err.Error(), "reads base "+b2.WeightsHash[:16]) {
		t.Errorf("mixture without its second base: %v, want ErrInvalidAdaptor naming base %s", err, b2.WeightsHash[:16])
	}
	cfg := b2.Config
	cfg.Vocab--
	other, err := model.NewRandomBase(cfg, 9)
	if err != nil {
		t.Fatal(err)
	}
	other.WeightsHash = "other"
	if _, err := New(Config{Base: b, Tokenizer: tokenizer.ByteTokenizer{}, Mix: []*model.Base{other}}); err == nil || !strings.Contains(err.Error(), "one tokenizer") {
		t.Errorf("a second base of another vocabulary: %v, want a refusal", err)
	}
}
