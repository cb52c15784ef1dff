package experiments

import (
	"fmt"
	"slices"
	"time"

	"carryon/carryon"
	"carryon/model"
)

// MixResult is the mixture experiment: the reference carry-on reading
// sources from several layers of the base, and from a second base (each
// source has its own projection into the trunk; a second base has its own
// bridge).
type MixResult struct {
	Runs []CarryOnRun `json:"runs"`
	// Mix names the second base ("" when the run had none).
	Mix string `json:"mix,omitempty"`
	// Inference is the final-only carry-on and the mixture of bases
	// (seed 1) run at inference, as generate and serve run them: every
	// base its own forward pass, not the cache (none without a second
	// base).
	Inference []MixInference `json:"inference,omitempty"`
	// ExactProblems is how many held-out problems Inference answers
	// greedily (the test split's, then problems no run trains on, as in
	// the exact-match experiment).
	ExactProblems int `json:"exact_problems,omitempty"`
}

// MixInference is one carry-on of the mixture experiment at inference.
type MixInference struct {
	Sources string `json:"sources"`
	// CachedLoss is its held-out (test) loss on the cached embeddings
	// (the run's ValLoss); Loss the same through carryon.ForwardStages
	// (the base and the second base run here, through the same bridge).
	CachedLoss float64 `json:"cached_loss"`
	Loss       float64 `json:"loss"`
	// Exact scores its greedy answers (carryon.GenerateIDs, a key/value
	// cache per base), Seconds their wall time.
	Exact   ExactRow `json:"exact"`
	Seconds float64  `json:"seconds"`
}

// mixExp: the reference carry-on (h=64, L=2, q8) with sources final;
// final + the token embeddings (layer:0); final + the middle of the base;
// all three; and, with Options.Mix, final + the second base's final
// hidden states. The single-source and two-base runs also run with a
// second seed, which measures the noise a difference must clear. With a
// second base, the final-only and two-base carry-ons (seed 1) then run at
// inference (mixInference).
func (r *runner) mixExp() error {
	mid := max(1, r.base.Config.Layers/2)
	out := &MixResult{Mix: r.opt.MixName}
	var specs []spec
	for _, src := range [][]int{nil, {model.FinalLayer, 0}, {model.FinalLayer, mid}, {model.FinalLayer, 0, mid}} {
		s := r.main("fit")
		s.sources = src
		specs = append(specs, s)
	}
	if r.opt.Mix != nil {
		s := r.main("fit")
		s.mix, s.mixName = r.opt.Mix, r.opt.MixName
		specs = append(specs, s)
		for _, s := range []spec{specs[0], s} {
			s.seed = 2
			specs = append(specs, s)
		}
	}
	var runs []*trained
	for _, s := range specs {
		t, err := r.carryOn(s)
		if err != nil {
			return fmt.Errorf("sources %s: %w", mixNames(s.sources, s.mixName), err)
		}
		out.Runs = append(out.Runs, t.run)
		runs = append(runs, t)
	}
	if r.opt.Mix != nil {
		probs := append(slices.Clone(r.split.Val), r.split.Unused...)
		probs = probs[:min(len(probs), r.sz.ExactProblems)]
		out.ExactProblems = len(probs)
		for _, i := range []int{0, 4} {
			inf, err := r.mixInference(specs[i], runs[i], probs)
			if err != nil {
				return fmt.Errorf("sources %s at inference: %w", mixNames(specs[i].sources, specs[i].mixName), err)
			}
			out.Inference = append(out.Inference, inf)
		}
	}
	r.res.Mix = out
	return nil
}

// mixInference runs the carry-on t of s as inference does: its held-out
// loss through carryon.ForwardStages over every test sequence (which must
// equal its loss on the cache), and greedy answers to probs.
func (r *runner) mixInference(s spec, t *trained, probs []Problem) (MixInference, error) {
	var mix []*model.Base
	if s.mix != nil {
		mix = []*model.Base{s.mix}
	}
	co := t.co
	stages := []*carryon.Model{co}
	inf := MixInference{Sources: mixNames(s.sources, s.mixName), CachedLoss: t.run.ValLoss, Exact: ExactRow{System: mixNames(s.sources, s.mixName)}}
	head := newHeadLoss(r.base)
	var sum float64
	n := 0
	for _, ch := range r.test.Val {
		for _, ex := range ch.Seqs {
			if err := r.ctx.Err(); err != nil {
				return inf, err
			}
			_, y, err := carryon.ForwardStages(r.base, stages, co.Config.Alpha, ex.Tokens, s.codec, mix...)
			if err != nil {
				return inf, err
			}
			l, k := head.loss(y, ex)
			sum, n = sum+l, n+k
		}
	}
	if n == 0 {
		return inf, fmt.Errorf("no answer tokens in the test split")
	}
	inf.Loss = sum / float64(n)
	sys := exactSystem{name: inf.Sources, base: r.base, stages: stages, alpha: co.Config.Alpha, bridge: s.codec, mix: mix}
	t0 := time.Now()
	for _, p := range probs {
		if err := r.ctx.Err(); err != nil {
			return inf, err
		}
		if _, err := r.answer(sys, p, &inf.Exact, len(probs)); err != nil {
			return inf, err
		}
	}
	inf.Seconds = time.Since(t0).Seconds()
	r.logf("mix at inference: %s: held-out loss %.6f through ForwardStages, %.6f on the cache; %d of %d greedy answers right (%.0f s)",
		inf.Sources, inf.Loss, inf.CachedLoss, inf.Exact.Correct, len(probs), inf.Seconds)
	return inf, nil
}

// mixNames writes a run's sources: the base's layers, then the second
// base's final hidden states.
func mixNames(src []int, mix string) string {
	n := sourceNames(src)
	if mix != "" {
		n += " + " + mix + ":final"
	}
	return n
}
