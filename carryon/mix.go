package carryon

// Sources: where each input of a chain of carry-on stages comes from. The
// primary base gives "final" and "layer:k"; a mixture of bases adds further
// bases, whose hidden states a source names "base:<hash>:final" or
// "base:<hash>:layer:k" (MixSourceName). planSources is the one place a
// source name is resolved to a (base, layer).

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"carryon/model"
	"carryon/tensor"
)

// MixHashLen is how many hex digits of a mixed base's weights hash its
// source names carry.
const MixHashLen = 16

// MixSourceName names layer (model.FinalLayer or 0..Layers) of the base
// with weights hash hash as a carry-on source of a mixture:
// "base:<first MixHashLen hex digits>:final" or ":layer:k".
func MixSourceName(hash string, layer int) string {
	name := "final"
	if layer != model.FinalLayer {
		name = "layer:" + strconv.Itoa(layer)
	}
	return "base:" + mixHash(hash) + ":" + name
}

// mixHash is the part of a weights hash that source names carry.
func mixHash(h string) string {
	if len(h) > MixHashLen {
		return h[:MixHashLen]
	}
	return h
}

// MixHashes lists the weights hashes (as source names carry them) of the
// further bases that stages read, in the order their sources first appear.
func MixHashes(stages []*Model) []string {
	var out []string
	for _, st := range stages {
		for _, src := range st.Config.Sources {
			if rest, ok := strings.CutPrefix(src.Name, "base:"); ok {
				h, _, _ := strings.Cut(rest, ":")
				if !slices.Contains(out, h) {
					out = append(out, h)
				}
			}
		}
	}
	return out
}

// CheckMix checks that the further bases mix are exactly those stages
// read (besides b): each stage's sources resolve (planSources), and every
// base of mix is read by some stage.
func CheckMix(b *model.Base, mix []*model.Base, stages []*Model) error {
	if _, err := planSources(b, mix, stages); err != nil {
		return err
	}
	read := MixHashes(stages)
	for _, m := range mix {
		if !slices.Contains(read, mixHash(m.WeightsHash)) {
			if len(read) == 0 {
				return fmt.Errorf("mixed base %s is not a source of the adaptors: they read the base alone (drop it)", mixHash(m.WeightsHash))
			}
			return fmt.Errorf("mixed base %s is not a source of the adaptors: they read the bases %s", mixHash(m.WeightsHash), strings.Join(read, ", "))
		}
	}
	return nil
}

// sourcePlan says where a chain's sources come from: the bases that run
// (the primary base first, then each further base some stage reads), the
// layers each returns (the primary's starts with model.FinalLayer), and,
// per stage and source, which base and which of its layers. Stage i's
// source 0 is the primary base's final hidden state (replaced by stage
// i-1's output when i > 0).
type sourcePlan struct {
	bases  []*model.Base
	layers [][]int    // per base
	src    [][]srcRef // per stage, per source
	maxPos int        // the shortest context of the bases
}

// srcRef is one source: an index into sourcePlan.bases, and one into that
// base's layers.
type srcRef struct{ base, layer int }

// planSources resolves the sources of stages against the base b and the
// further bases mix (which must read b's token ids: one vocabulary).
func planSources(b *model.Base, mix []*model.Base, stages []*Model) (*sourcePlan, error) {
	if err := checkMixBases(b, mix); err != nil {
		return nil, err
	}
	c := b.Config
	p := &sourcePlan{bases: []*model.Base{b}, layers: [][]int{{model.FinalLayer}}, src: make([][]srcRef, len(stages)), maxPos: c.MaxPos}
	for i, st := range stages {
		sc := st.Config
		if sc.Vocab != c.Vocab || sc.D() != c.Dim {
			return nil, fmt.Errorf("stage %d is for a base of width %d and vocabulary %d, this base has %d and %d", i, sc.D(), sc.Vocab, c.Dim, c.Vocab)
		}
		for j, src := range sc.Sources {
			base, l, err := resolveSource(src.Name, b, mix)
			if err != nil {
				return nil, fmt.Errorf("stage %d: %w", i, err)
			}
			if (j == 0) != (base == b && l == model.FinalLayer) {
				return nil, fmt.Errorf("stage %d: source %d is %q; only the first source may be the base's final hidden state, and it must be", i, j, src.Name)
			}
			if src.Dim != base.Config.Dim {
				return nil, fmt.Errorf("stage %d: source %q has width %d, its base %d", i, src.Name, src.Dim, base.Config.Dim)
			}
			p.src[i] = append(p.src[i], p.add(base, l))
		}
	}
	return p, nil
}

// add returns the reference to layer l of base, adding either to the plan
// when new.
func (p *sourcePlan) add(base *model.Base, l int) srcRef {
	bi := -1
	for k, have := range p.bases {
		if have == base {
			bi = k
		}
	}
	if bi < 0 {
		bi = len(p.bases)
		p.bases = append(p.bases, base)
		p.layers = append(p.layers, nil)
		p.maxPos = min(p.maxPos, base.Config.MaxPos)
	}
	for k, have := range p.layers[bi] {
		if have == l {
			return srcRef{bi, k}
		}
	}
	p.layers[bi] = append(p.layers[bi], l)
	return srcRef{bi, len(p.layers[bi]) - 1}
}

// sources are stage i's inputs: y (the previous stage's output, or the
// primary base's final hidden states) first, then its other sources from
// hs (per base of the plan, per layer: (T, that base's Dim)).
func (p *sourcePlan) sources(i int, y []float32, hs [][][]float32) [][]float32 {
	src := make([][]float32, len(p.src[i]))
	src[0] = y
	for j, r := range p.src[i][1:] {
		src[j+1] = hs[r.base][r.layer]
	}
	return src
}

// bridge round-trips every hidden state of hs (per base, per layer:
// (T, that base's Dim)) through codec, as the swarm's bridge does before
// the cache; nil codec leaves them exact. buf is reused and returned.
func (p *sourcePlan) bridge(codec *tensor.Codec, hs [][][]float32, T int, buf []byte) ([]byte, error) {
	if codec == nil {
		return buf, nil
	}
	for k, per := range hs {
		D := p.bases[k].Config.Dim
		for _, h := range per {
			buf = codec.Encode(buf[:0], h, T, D)
			if err := codec.Decode(h, buf, T, D); err != nil {
				return buf, err
			}
		}
	}
	return buf, nil
}

// checkMixBases checks that the further bases of a mixture can run beside
// b: each reads b's token ids (the same vocabulary size; the caller checks
// the tokenizers themselves, tokenizer.Same), and no two share a name.
func checkMixBases(b *model.Base, mix []*model.Base) error {
	for i, m := range mix {
		switch {
		case m == nil:
			return fmt.Errorf("mixed base %d is nil", i)
		case m.Config.Vocab != b.Config.Vocab:
			return fmt.Errorf("mixed base %s has a vocabulary of %d tokens, the base %d: a mixture needs one tokenizer for every base", mixHash(m.WeightsHash), m.Config.Vocab, b.Config.Vocab)
		case m.WeightsHash == "":
			return fmt.Errorf("mixed base %d has no weights hash: its sources cannot be named", i)
		}
		for _, o := range mix[:i] {
			if mixHash(o.WeightsHash) == mixHash(m.WeightsHash) {
				return fmt.Errorf("mixed base %s is given twice", mixHash(m.WeightsHash))
			}
		}
	}
	return nil
}

// resolveSource maps a source name to its base (b or one of mix) and layer.
func resolveSource(name string, b *model.Base, mix []*model.Base) (*model.Base, int, error) {
	rest, ok := strings.CutPrefix(name, "base:")
	if !ok {
		l, err := stageLayer(name, b.Config.Layers)
		return b, l, err
	}
	h, layer, ok := strings.Cut(rest, ":")
	if !ok || h == "" {
		return nil, 0, fmt.Errorf("source %q: want base:<hash>:final or base:<hash>:layer:k", name)
	}
	for _, m := range mix {
		if mixHash(m.WeightsHash) == h {
			l, err := stageLayer(layer, m.Config.Layers)
			if err != nil {
				return nil, 0, fmt.Errorf("source %q of mixed base %s: %w", name, h, err)
			}
			return m, l, nil
		}
	}
	given := "no further base was given"
	if len(mix) > 0 {
		var hs []string
		for _, m := range mix {
			hs = append(hs, mixHash(m.WeightsHash))
		}
		given = "the further bases given are " + strings.Join(hs, ", ")
	}
	return nil, 0, fmt.Errorf("source %q reads base %s, which was not given (%s): this adaptor is a mixture of bases, and runs only with each of them (--mix MODEL on carryon generate, serve and eval; carryon.GenerateOptions.Mix)", name, h, given)
}

// stageLayer maps a source name of one base ("final", "layer:k") to its
// layer.
func stageLayer(name string, layers int) (int, error) {
	if name == "final" {
		return model.FinalLayer, nil
	}
	if k, ok := strings.CutPrefix(name, "layer:"); ok {
		if n, err := strconv.Atoi(k); err == nil && n >= 0 && n <= layers {
			return n, nil
		}
	}
	return 0, fmt.Errorf("source %q is not one this base provides (final, layer:0..%d)", name, layers)
}
