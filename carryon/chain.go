package carryon

import (
	"carryon/model"
	"carryon/tensor"
	"carryon/tokenizer"
	"errors"
	"fmt"
	"math"
)

// GenerateOptions configures Generate.
type GenerateOptions struct {
	MaxTokens   int     // new tokens at most; 0 means 128
	Temperature float64 // 0: greedy
	TopK        int     // sample among the k largest logits; 0: all
	TopP        float64 // nucleus sampling (model.SampleOptions); 0 or 1: all
	// PresencePenalty and FrequencyPenalty lower the logits of tokens
	// generated before (model.SampleOptions).
	PresencePenalty, FrequencyPenalty float64
	Seed                              uint64 // of the sampling stream
	// Stop lists extra token ids that end generation (the tokenizer's and
	// the base's EOS always do).
	Stop []int32
	// Bridge, when not "", round-trips every base hidden state through that
	// codec (tensor.ParseCodec) before the carry-on, as in training.
	Bridge string
	// OnToken, when set, sees each generated token as it is chosen
	// (stop tokens included); returning false stops generation.
	OnToken func(id int32) bool
	// OnLogits, when set, sees the logits (Vocab) each token is drawn
	// from, just before the draw (and OnToken). The slice is reused.
	OnLogits func(logits []float32)
	// Mix are the further bases of a mixture of bases, whose hidden
	// states some stage reads (sources "base:<hash>:final" or
	// "base:<hash>:layer:k"): each must read the base's token ids (one
	// tokenizer), and runs its own forward pass, with its own key/value
	// cache, in lockstep with the base; Bridge applies to it too.
	Mix []*model.Base
	// OnPromptLogits, when set, sees for each prompt position i in
	// 1..len(prompt)-1 the logits (Vocab) that predict prompt[i] from the
	// tokens before it (log-probabilities of an echoed prompt). The slice
	// is reused.
	OnPromptLogits func(i int, logits []float32)
}

// SampleOptions returns the sampler's part of o.
func (o GenerateOptions) SampleOptions() model.SampleOptions {
	return model.SampleOptions{Temperature: o.Temperature, TopK: o.TopK, TopP: o.TopP,
		PresencePenalty: o.PresencePenalty, FrequencyPenalty: o.FrequencyPenalty, Seed: o.Seed}
}

// Generation is the result of Generate.
type Generation struct {
	Prompt []int32 // the prompt's tokens (BOS included)
	Tokens []int32 // generated tokens, without the stop token
	Text   string  // Tokens decoded
	Stop   bool    // ended on a stop token (else on MaxTokens or OnToken)
}

// Generate runs base + carry-on stages on prompt: BOS (when the tokenizer
// has one) and the prompt's tokens, as the data set formats them, then up
// to MaxTokens sampled tokens. Each stage is a boosting stage applied in
// order (docs/method.md): stage i takes the previous stage's output as its
// primary source x̂ (stage 0 the base's final hidden state) and its other
// sources ("layer:k") from the base, and outputs y_i = y_{i-1} + α·g⊙Δx;
// the logits are W_pred·y_last. alpha scales every stage; with no stages
// (or alpha 0) this is the base alone.
func Generate(b *model.Base, tok tokenizer.Tokenizer, stages []*Model, alpha float32, prompt string, opt GenerateOptions) (*Generation, error) {
	var ids []int32
	if bos := tok.BOS(); bos >= 0 {
		ids = append(ids, bos)
	}
	ids = append(ids, tok.Encode(prompt)...)
	if len(ids) == 0 {
		return nil, errors.New("model.Generate: empty prompt")
	}
	opt.Stop = append(append([]int32(nil), opt.Stop...), tok.EOS())
	out, stopped, err := GenerateIDs(b, stages, alpha, ids, opt)
	if err != nil {
		return nil, err
	}
	return &Generation{Prompt: ids, Tokens: out, Text: tok.Decode(out), Stop: stopped}, nil
}

// StageLayers checks that carry-on stages fit the base and returns the base
// layers they read (model.FinalLayer first, then the shortcuts) and, per stage,
// the index into layers of each of its sources. Stage i's source 0 is the
// final hidden state (replaced by stage i-1's output when i > 0). Stages
// that read a further base (a mixture) are refused: CheckStages takes the
// further bases.
func StageLayers(b *model.Base, stages []*Model) (layers []int, srcIdx [][]int, err error) {
	p, err := planSources(b, nil, stages)
	if err != nil {
		return nil, nil, err
	}
	srcIdx = make([][]int, len(stages))
	for i, refs := range p.src {
		for _, r := range refs {
			srcIdx[i] = append(srcIdx[i], r.layer) // r.base is 0: no further base was given
		}
	}
	return p.layers[0], srcIdx, nil
}

// CheckStages checks that carry-on stages fit the base b and the further
// bases mix of a mixture (nil for none): every source resolves to a base
// and one of its layers, with that base's width.
func CheckStages(b *model.Base, mix []*model.Base, stages []*Model) error {
	_, err := planSources(b, mix, stages)
	return err
}

// ForwardStages runs the base and the carry-on stages (applied in order, as
// in Generate) over one whole sequence. It returns x, the base's final
// hidden states (T, Dim) (bridged when bridge is not ""), and y, the last
// stage's output (T, Dim) (x itself with no stage): the logits are
// W_pred·y, and W_pred·x those of the base alone. mix are the further bases
// of a mixture (sources "base:<hash>:..."): each runs its own forward pass
// over the same ids, and its hidden states go through the same bridge.
func ForwardStages(b *model.Base, stages []*Model, alpha float32, ids []int32, bridge string, mix ...*model.Base) (x, y []float32, err error) {
	fail := func(format string, args ...any) ([]float32, []float32, error) {
		return nil, nil, fmt.Errorf("model.ForwardStages: "+format, args...)
	}
	p, err := planSources(b, mix, stages)
	if err != nil {
		return fail("%w", err)
	}
	var codec *tensor.Codec
	if bridge != "" {
		cd, err := tensor.ParseCodec(bridge)
		if err != nil {
			return fail("bridge: %w", err)
		}
		codec = &cd
	}
	T := len(ids)
	hs := make([][][]float32, len(p.bases))
	for k, base := range p.bases {
		if hs[k], err = base.Forward(ids, p.layers[k]); err != nil {
			if k > 0 {
				return fail("mixed base %s: %w", mixHash(base.WeightsHash), err)
			}
			return fail("%w", err)
		}
	}
	if _, err := p.bridge(codec, hs, T, nil); err != nil {
		return fail("bridge: %w", err)
	}
	y = hs[0][0]
	for i, st := range stages {
		s, err := st.NewSession(T)
		if err != nil {
			return fail("stage %d: %w", i, err)
		}
		out, err := s.Prefill(p.sources(i, y, hs), T, alpha)
		if err != nil {
			return fail("stage %d: %w", i, err)
		}
		y = out // the session is dropped: out is ours
	}
	return hs[0][0], y, nil
}

// GenerateIDs is Generate on token ids. It returns the generated tokens
// (without the stop token) and whether a stop token ended them.
func GenerateIDs(b *model.Base, stages []*Model, alpha float32, prompt []int32, opt GenerateOptions) ([]int32, bool, error) {
	fail := func(format string, args ...any) ([]int32, bool, error) {
		return nil, false, fmt.Errorf("model.Generate: "+format, args...)
	}
	c := b.Config
	if math.IsNaN(float64(alpha)) || math.IsInf(float64(alpha), 0) {
		return fail("alpha %v, want a finite value", alpha)
	}
	if opt.MaxTokens == 0 {
		opt.MaxTokens = 128
	}
	if opt.MaxTokens < 0 {
		return fail("MaxTokens %d, want >= 0", opt.MaxTokens)
	}
	var codec *tensor.Codec
	if opt.Bridge != "" {
		cd, err := tensor.ParseCodec(opt.Bridge)
		if err != nil {
			return fail("bridge: %w", err)
		}
		codec = &cd
	}
	sampler, err := model.NewSampler(opt.SampleOptions())
	if err != nil {
		return fail("%w", err)
	}
	p, err := planSources(b, opt.Mix, stages)
	if err != nil {
		return fail("%w", err)
	}
	maxLen := min(len(prompt)+opt.MaxTokens, p.maxPos)
	if len(prompt) > maxLen || len(prompt) == 0 {
		return fail("prompt of %d tokens, the base takes 1..%d", len(prompt), p.maxPos)
	}
	// One session (key/value cache) per base, run in lockstep.
	sess := make([]*model.Session, len(p.bases))
	for k, base := range p.bases {
		if sess[k], err = base.NewSession(maxLen, p.layers[k]); err != nil {
			return fail("%w", err)
		}
	}
	coSess := make([]*Session, len(stages))
	for i, st := range stages {
		if coSess[i], err = st.NewSession(maxLen); err != nil {
			return fail("stage %d: %w", i, err)
		}
	}
	stop := map[int32]bool{}
	for _, id := range append(opt.Stop, c.EOS) {
		if id >= 0 {
			stop[id] = true
		}
	}
	logits := make([]float32, c.Vocab)
	var encBuf []byte
	hs := make([][][]float32, len(p.bases))
	// next runs T new tokens through every base and the stages and returns
	// their final outputs: (T, Dim).
	next := func(ids []int32) ([]float32, error) {
		for k, s := range sess {
			if hs[k], err = s.Prefill(ids); err != nil {
				return nil, err
			}
		}
		T := len(ids)
		if encBuf, err = p.bridge(codec, hs, T, encBuf); err != nil {
			return nil, err
		}
		y := hs[0][0]
		for i := range stages {
			out, err := coSess[i].Prefill(p.sources(i, y, hs), T, alpha)
			if err != nil {
				return nil, err
			}
			y = append([]float32(nil), out...) // the session reuses out
		}
		return y, nil
	}
	ys, err := next(prompt)
	if err != nil {
		return fail("%w", err)
	}
	if opt.OnPromptLogits != nil {
		for i := 1; i < len(prompt); i++ {
			b.LogitsInto(logits, ys[(i-1)*c.Dim:i*c.Dim], 1)
			opt.OnPromptLogits(i, logits)
		}
	}
	y := ys[(len(prompt)-1)*c.Dim:]
	var gen []int32
	for len(gen) < opt.MaxTokens {
		b.LogitsInto(logits, y, 1)
		if opt.OnLogits != nil {
			opt.OnLogits(logits)
		}
		id := sampler.Sample(logits)
		if opt.OnToken != nil && !opt.OnToken(id) {
			return gen, false, nil
		}
		if stop[id] {
			return gen, true, nil
		}
		sampler.Accept(id)
		gen = append(gen, id)
		if len(gen) == opt.MaxTokens || len(prompt)+len(gen) >= maxLen {
			break
		}
		if y, err = next([]int32{id}); err != nil {
			return fail("%w", err)
		}
	}
	return gen, false, nil
}

// MaxStages bounds a boosting chain: each stage runs on every sequence of
// every later stage.
const MaxStages = 16

// Stage is one adaptor of a chain, decoded and checked.
type Stage struct {
	CID   string // content ID of the adaptor file
	Model *Model
	Meta  Meta
}

// DecodeStage decodes an adaptor file and checks that it was made for base:
// an adaptor that does not name its base is refused too.
func DecodeStage(data []byte, cid string, base *model.Base) (Stage, error) {
	co, meta, err := Unmarshal(data)
	if err != nil {
		return Stage{}, fmt.Errorf("adaptor %s: %w", cid, err)
	}
	switch {
	case meta.BaseHash == "":
		return Stage{}, fmt.Errorf("adaptor %s does not say which base it was trained on: refusing it", cid)
	case meta.BaseHash != base.WeightsHash:
		return Stage{}, fmt.Errorf("adaptor %s was trained on base %s, this base is %s", cid, shortHash(meta.BaseHash), shortHash(base.WeightsHash))
	}
	return Stage{CID: cid, Model: co, Meta: meta}, nil
}

// ResolveChain loads the adaptor id and its boosting parents through get
// (which returns an adaptor file by CID), root first, checking each with
// DecodeStage and the whole chain with StageLayers.
func ResolveChain(id string, get func(cid string) ([]byte, error), base *model.Base) ([]Stage, error) {
	var chain []Stage
	for p := id; p != ""; {
		if len(chain) == MaxStages {
			return nil, fmt.Errorf("adaptor %s: boosting chain longer than %d stages", id, MaxStages)
		}
		data, err := get(p)
		if err != nil {
			if p == id {
				return nil, err
			}
			return nil, fmt.Errorf("adaptor %s is a boosting stage on top of %s: %w", chain[0].CID, p, err)
		}
		st, err := DecodeStage(data, p, base)
		if err != nil {
			return nil, err
		}
		chain = append([]Stage{st}, chain...)
		p = st.Meta.Parent
	}
	if _, _, err := StageLayers(base, Models(chain)); err != nil {
		return nil, err
	}
	return chain, nil
}

// CheckOrder checks a chain given stage by stage (as on a command line):
// each boosting stage must come right after its parent.
func CheckOrder(chain []Stage) error {
	for i, st := range chain {
		switch {
		case st.Meta.Parent != "" && i == 0:
			return fmt.Errorf("adaptor %s is a boosting stage on top of %s: list that adaptor before it", st.CID, st.Meta.Parent)
		case st.Meta.Parent != "" && st.Meta.Parent != chain[i-1].CID:
			return fmt.Errorf("adaptor %s is a boosting stage on top of %s, not of %s", st.CID, st.Meta.Parent, chain[i-1].CID)
		}
	}
	return nil
}

// Models lists the chain's networks in order.
func Models(chain []Stage) []*Model {
	out := make([]*Model, len(chain))
	for i, s := range chain {
		out[i] = s.Model
	}
	return out
}

// shortHash abbreviates a weights hash for messages.
func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
