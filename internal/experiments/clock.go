package experiments

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"time"

	"carryon/coordinator"
	"carryon/model"
	"carryon/tensor"
)

// clockExp: held-out loss against wall-clock seconds for three ways of
// spending the same budget on the same problems:
//
//   - carry-on: the base runs forward once over the data (the embedding,
//     on the carry-on's clock from t = 0), then the carry-on trains on the
//     cache;
//   - full fine-tune: every weight of the base trained (model.BaseTrainer);
//   - scratch: a fresh base of the carry-on's own size (h = 64, L = 2, the
//     same vocabulary) pretrained on the problems' tokens.
//
// The carry-on's step count comes from the step time of the reference run
// (experiment 1), so that its cosine schedule ends at about the budget; the
// two base trainers schedule their learning rate on the clock itself.
func (r *runner) clockExp() error {
	bc := r.base.Config
	out := &ClockResult{BudgetSeconds: r.sz.ClockSeconds, BaseLoss: r.res.Setup.BaseLoss}

	// Carry-on. The embedding is measured on a cold cache with the real
	// base (not the run's shared forward pass).
	cfg := coordinator.Config{CacheDir: filepath.Join(r.cacheDir, "clock"), Codec: "q8", Logger: r.log}
	c, err := coordinator.New(nil, nil, r.base, cfg)
	if err != nil {
		return err
	}
	out.EmbedSeconds, err = timed(func() error { return c.CollectLocal(r.ctx, r.fit, nil, nil) })
	c.Close()
	if err != nil {
		return err
	}
	ref, err := r.carryOn(r.main("fit"))
	if err != nil {
		return err
	}
	s := r.main("fit")
	s.steps = max(1, int((r.sz.ClockSeconds-out.EmbedSeconds)/(ref.run.StepMS/1000)))
	t, err := r.carryOn(s)
	if err != nil {
		return err
	}
	co := ClockMethod{Name: fmt.Sprintf("carry-on h=64 L=2 (%d params)", t.run.Params), Params: t.run.Params, Steps: s.steps,
		LR: r.sz.LR, StepMS: t.run.StepMS, Loss: t.run.ValLoss}
	co.Curve.add(0, 0, out.BaseLoss)
	for i := range t.run.Curve.Step {
		co.Curve.add(t.run.Curve.Step[i], out.EmbedSeconds+t.run.Curve.Seconds[i], t.run.Curve.Loss[i])
	}
	co.Seconds = co.Curve.Seconds[len(co.Curve.Seconds)-1]
	out.Methods = append(out.Methods, co)
	r.logf("clock: carry-on %d steps, embedding %.1f s, %.1f s in all, loss %.4f", s.steps, out.EmbedSeconds, co.Seconds, co.Loss)

	// Full fine-tune of the base.
	ft, err := r.trainBase("full fine-tune of the base", func() (*model.BaseTrainer, error) {
		return model.NewBaseTrainer(r.base, 2, bc.MaxPos)
	}, r.sz.FinetuneLR, 0.01)
	if err != nil {
		return err
	}
	out.Methods = append(out.Methods, ft)

	// The carry-on's size, from scratch.
	tiny := bc
	tiny.Dim, tiny.Layers, tiny.Heads, tiny.KVHeads, tiny.HeadDim, tiny.FFN = 64, 2, 4, 4, 16, 172
	sc, err := r.trainBase("h=64 L=2 from scratch", func() (*model.BaseTrainer, error) {
		b, err := model.NewRandomBase(tiny, 1)
		if err != nil {
			return nil, err
		}
		model.InitTrainWeights(b, 1)
		return model.NewBaseTrainer(b, 2, bc.MaxPos)
	}, r.sz.ScratchLR, 0.1)
	if err != nil {
		return err
	}
	out.Methods = append(out.Methods, sc)
	r.res.Clock = out
	return nil
}

// trainBase trains every weight of the model that newTrainer makes on the
// fitting problems' whole sequences (BaseTrainer has no loss mask, so the
// question tokens are trained too), AdamW with warm-up and cosine decay,
// for the clock budget, and scores the held-out answer tokens along
// the way. Training stops at the budget.
func (r *runner) trainBase(name string, newTrainer func() (*model.BaseTrainer, error), lr, wd float32) (ClockMethod, error) {
	m := ClockMethod{Name: name, LR: lr}
	train := sequences(r.fit.Train)
	val := sequences(r.fit.Val)
	// Batches walk a fresh shuffle of the problems each epoch.
	batch := func(step int) [][]int32 {
		seqs := make([][]int32, r.sz.Batch)
		for i := range seqs {
			k := (step-1)*r.sz.Batch + i
			perm := rand.New(rand.NewPCG(1, uint64(k/len(train)))).Perm(len(train))
			seqs[i] = train[perm[k%len(train)]].Tokens
		}
		return seqs
	}
	tr, err := newTrainer()
	if err != nil {
		return m, err
	}
	for _, p := range tr.Params() {
		m.Params += len(p)
	}
	l0, err := answerLoss(tr.Base, val)
	if err != nil {
		return m, err
	}
	m.Curve.add(0, 0, l0)
	// The schedule runs on the clock: warm-up over the first 5% of the
	// budget, then cosine decay to lr/10 at the budget, where training
	// stops; a validation pass every budget/ClockEvals seconds.
	const ticks = 1000
	budget := r.sz.ClockSeconds
	nextEval := budget / float64(r.sz.ClockEvals)
	var clock float64
	for step := 1; clock < budget; step++ {
		if err := r.ctx.Err(); err != nil {
			return m, err
		}
		t := time.Now()
		l, n, err := tr.LossAndGrad(batch(step))
		if err != nil {
			return m, err
		}
		if loss := l / float64(n); math.IsNaN(loss) || math.IsInf(loss, 0) {
			return m, fmt.Errorf("%s: step %d: loss is %v", name, step, loss)
		}
		tr.Update(tensor.CosineLR(1+int(ticks*clock/budget), ticks/20, ticks, lr, lr/10), wd, 1)
		clock += time.Since(t).Seconds()
		m.Steps = step
		if clock >= nextEval || clock >= budget {
			vl, err := answerLoss(tr.Base, val)
			if err != nil {
				return m, err
			}
			m.Curve.add(step, clock, vl)
			nextEval += budget / float64(r.sz.ClockEvals)
		}
	}
	m.Seconds, m.StepMS = clock, 1000*clock/float64(m.Steps)
	m.Loss = m.Curve.Loss[len(m.Curve.Loss)-1]
	r.logf("clock: %s: %d params, %d steps, %.1f s, loss %.4f", name, m.Params, m.Steps, m.Seconds, m.Loss)
	return m, nil
}
