package coordinator

import (
	"context"
	"math"
	"testing"

	"carryon/carryon"
	"carryon/model"
)

// TestBoostingStage trains a carry-on, then a second stage on top of it:
// the second stage starts exactly at the first's output (its α = 0 loss is
// the first stage's loss), records its parent, improves on it, and the
// trained chain computes at inference (carryon.ForwardStages) what it was
// trained on.
func TestBoostingStage(t *testing.T) {
	b := localBase(t)
	ds := localData(t, 30)
	layers := []int{model.FinalLayer, 1}
	c := localCoordinator(t, t.TempDir(), b, "q8", layers)
	c.cfg.Train.Steps, c.cfg.Train.EvalEvery, c.cfg.Train.CheckpointEvery = 30, 30, -1
	c.cfg.Train.Optim.LR, c.cfg.Train.Optim.MinLR = 3e-3, 3e-4
	ctx := context.Background()
	if err := c.CollectLocal(ctx, ds, nil, nil); err != nil {
		t.Fatal(err)
	}
	first, err := c.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	blob, err := first.CarryOn.Marshal(first.Meta)
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.Store().AddBytes(ctx, blob)
	if err != nil {
		t.Fatal(err)
	}
	c.cfg.Train.Seed = 2
	second, err := c.Train(ctx, ds, Hooks{Parent: id.String()})
	if err != nil {
		t.Fatal(err)
	}
	f, s := first.Evals[len(first.Evals)-1], second.Evals[len(second.Evals)-1]
	if math.Abs(s.BaseLoss-f.Loss) > 1e-5*f.Loss {
		t.Errorf("second stage at α=0 has loss %.7f, want the first stage's %.7f", s.BaseLoss, f.Loss)
	}
	if !(s.Loss < s.BaseLoss) {
		t.Errorf("second stage did not improve on the first: %.5f → %.5f", s.BaseLoss, s.Loss)
	}
	if second.Meta.Parent != id.String() {
		t.Errorf("parent = %q, want %s", second.Meta.Parent, id)
	}
	// Inference on the chain equals what training saw.
	ch := ds.Val[0]
	ids := ch.Seqs[0].Tokens
	_, y, err := carryon.ForwardStages(b, []*carryon.Model{first.CarryOn, second.CarryOn}, 1, ids, "q8")
	if err != nil {
		t.Fatal(err)
	}
	val, err := c.loadSplit(ds.Val[:1])
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.parentChain(id.String(), len(ids))
	if err != nil {
		t.Fatal(err)
	}
	d := &decoder{c: c, chain: chain}
	src, err := d.sources(val[0])
	if err != nil {
		t.Fatal(err)
	}
	ws := second.CarryOn.NewWorkspace(len(ids))
	want := second.CarryOn.Forward(ws, src, len(ids), 1)
	for i := range want {
		if math.Abs(float64(want[i]-y[i])) > 1e-4*(1+math.Abs(float64(want[i]))) {
			t.Fatalf("y[%d]: inference %v, training path %v", i, y[i], want[i])
		}
	}
	// A parent made for another base is refused.
	other := localBase(t)
	other.WeightsHash = "cd" + other.WeightsHash[2:]
	c2 := localCoordinator(t, t.TempDir(), other, "q8", layers)
	c2.store = c.store
	if _, err := c2.parentChain(id.String(), 8); err == nil {
		t.Error("a parent trained on another base was accepted")
	}
}
