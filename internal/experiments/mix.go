package experiments

import "carryon/model"

// MixResult is the mixture experiment: the reference carry-on reading
// sources from several layers of the base (each source has its own
// projection into the trunk: its own bridge).
type MixResult struct {
	Runs []CarryOnRun `json:"runs"`
}

// mixExp: the reference carry-on (h=64, L=2, q8) with sources final;
// final + the token embeddings (layer:0); final + the middle of the base;
// and all three.
func (r *runner) mixExp() error {
	mid := max(1, r.base.Config.Layers/2)
	out := &MixResult{}
	for _, src := range [][]int{nil, {model.FinalLayer, 0}, {model.FinalLayer, mid}, {model.FinalLayer, 0, mid}} {
		s := r.main("fit")
		s.sources = src
		t, err := r.carryOn(s)
		if err != nil {
			return err
		}
		out.Runs = append(out.Runs, t.run)
	}
	r.res.Mix = out
	return nil
}
