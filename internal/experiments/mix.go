package experiments

import (
	"fmt"

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
}

// mixExp: the reference carry-on (h=64, L=2, q8) with sources final;
// final + the token embeddings (layer:0); final + the middle of the base;
// all three; and, with Options.Mix, final + the second base's final
// hidden states. The single-source and two-base runs also run with a
// second seed, which measures the noise a difference must clear.
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
	for _, s := range specs {
		t, err := r.carryOn(s)
		if err != nil {
			return fmt.Errorf("sources %s: %w", mixNames(s.sources, s.mixName), err)
		}
		out.Runs = append(out.Runs, t.run)
	}
	r.res.Mix = out
	return nil
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
