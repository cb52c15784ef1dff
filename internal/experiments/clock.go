package experiments

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"time"

	"carryon/coordinator"
	"carryon/internal/lora"
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
		LR: r.sz.LR, StepMS: t.run.StepMS, Loss: t.run.ValLoss, BestStep: t.run.BestStep}
	co.Curve.add(0, 0, r.res.Setup.BaseSelectLoss)
	for i := range t.run.Curve.Step {
		co.Curve.add(t.run.Curve.Step[i], out.EmbedSeconds+t.run.Curve.Seconds[i], t.run.Curve.Loss[i])
	}
	co.Seconds = co.Curve.Seconds[len(co.Curve.Seconds)-1]
	out.Methods = append(out.Methods, co)
	r.logf("clock: carry-on %d steps, embedding %.1f s, %.1f s in all, loss %.4f", s.steps, out.EmbedSeconds, co.Seconds, co.Loss)

	// LoRA on every attention and MLP projection of the base.
	var lo *lora.Adapter
	lm, err := r.trainBase(fmt.Sprintf("LoRA r=%d on the base", r.sz.LoRARank), func() (trainable, error) {
		tr, err := model.NewBaseTrainer(r.base, 2, bc.MaxPos)
		if err != nil {
			return nil, err
		}
		lo, err = lora.New(tr, lora.Config{Rank: r.sz.LoRARank, Seed: 1})
		return loraTrainable{lo}, err
	}, r.sz.LoRALR, 0)
	if err != nil {
		return err
	}
	out.Methods = append(out.Methods, lm)
	r.tuned = append(r.tuned, tunedBase{name: lm.Name, base: lo.Base()})

	// Full fine-tune of the base.
	var ftr *model.BaseTrainer
	ft, err := r.trainBase("full fine-tune of the base", func() (trainable, error) {
		var err error
		ftr, err = model.NewBaseTrainer(r.base, 2, bc.MaxPos)
		return fullTrainable{ftr}, err
	}, r.sz.FinetuneLR, 0.01)
	if err != nil {
		return err
	}
	out.Methods = append(out.Methods, ft)
	r.tuned = append(r.tuned, tunedBase{name: ft.Name, base: ftr.Base})

	// The carry-on's size, from scratch.
	tiny := bc
	tiny.Dim, tiny.Layers, tiny.Heads, tiny.KVHeads, tiny.HeadDim, tiny.FFN = 64, 2, 4, 4, 16, 172
	sc, err := r.trainBase("h=64 L=2 from scratch", func() (trainable, error) {
		b, err := model.NewRandomBase(tiny, 1)
		if err != nil {
			return nil, err
		}
		model.InitTrainWeights(b, 1)
		tr, err := model.NewBaseTrainer(b, 2, bc.MaxPos)
		return fullTrainable{tr}, err
	}, r.sz.ScratchLR, 0.1)
	if err != nil {
		return err
	}
	out.Methods = append(out.Methods, sc)
	r.res.Clock = out
	return nil
}

// trainable is a way of training a base: every weight (fullTrainable) or
// LoRA adapters (loraTrainable).
type trainable interface {
	LossAndGrad(seqs [][]int32) (float64, int, error)
	Update(lr, wd float32, maxNorm float64) float64
	NumParams() int
	Params() [][]float32 // what is trained
	Model() *model.Base  // the current model (merged weights for LoRA)
}

// snapshot copies ps into dst (reusing its buffers).
func snapshot(dst, ps [][]float32) [][]float32 {
	if len(dst) != len(ps) {
		dst = make([][]float32, len(ps))
	}
	for i, p := range ps {
		dst[i] = append(dst[i][:0], p...)
	}
	return dst
}

type fullTrainable struct{ *model.BaseTrainer }

func (f fullTrainable) NumParams() int {
	n := 0
	for _, p := range f.Params() {
		n += len(p)
	}
	return n
}

func (f fullTrainable) Model() *model.Base { return f.Base }

type loraTrainable struct{ *lora.Adapter }

func (l loraTrainable) Model() *model.Base {
	l.Merge()
	return l.Base()
}

// trainBase trains what newTrainer makes on the fitting problems' whole
// sequences (BaseTrainer has no loss mask, so the question tokens are
// trained too), AdamW with warm-up and cosine decay, for the clock budget,
// and scores the validation split's answer tokens along the way; the
// weights of the best validation pass are scored on the held-out test
// problems (best-by-validation, as the carry-on). Training stops at the
// budget.
func (r *runner) trainBase(name string, newTrainer func() (trainable, error), lr, wd float32) (ClockMethod, error) {
	m := ClockMethod{Name: name, LR: lr}
	train := sequences(r.fit.Train)
	val := sequences(r.fit.Val)
	test := sequences(r.test.Val)
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
	m.Params = tr.NumParams()
	l0, err := answerLoss(tr.Model(), val)
	if err != nil {
		return m, err
	}
	m.Curve.add(0, 0, l0)
	best := l0
	if m.Loss, err = answerLoss(tr.Model(), test); err != nil {
		return m, err
	}
	kept := snapshot(nil, tr.Params())
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
			vl, err := answerLoss(tr.Model(), val)
			if err != nil {
				return m, err
			}
			m.Curve.add(step, clock, vl)
			if vl < best {
				best, m.BestStep = vl, step
				kept = snapshot(kept, tr.Params())
				if m.Loss, err = answerLoss(tr.Model(), test); err != nil {
					return m, err
				}
			}
			nextEval += budget / float64(r.sz.ClockEvals)
		}
	}
	m.Seconds, m.StepMS = clock, 1000*clock/float64(m.Steps)
	// Keep the best pass's weights (for the exact-match experiment).
	for i, p := range tr.Params() {
		copy(p, kept[i])
	}
	r.logf("clock: %s: %d params, %d steps, %.1f s, loss %.4f", name, m.Params, m.Steps, m.Seconds, m.Loss)
	return m, nil
}
