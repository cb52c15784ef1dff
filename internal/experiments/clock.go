package experiments

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"carryon/coordinator"
	"carryon/internal/lora"
	"carryon/model"
	"carryon/tensor"
)

// ClockKeys are the methods of the clock experiment, in the order they
// run (Sizes.ClockMethods picks some):
//
//   - cold: the reference carry-on (h = 64, L = 2) on the frozen base, its
//     clock starting with the base's forward pass over the training and
//     validation problems into a fresh cache;
//   - cached: the same carry-on on an embedding already in the cache (what
//     a search, a second adaptor or a boosting stage sees: the cache is
//     paid once), its clock starting with opening and reading the cache;
//   - lora: LoRA adapters on every attention and MLP projection of the base;
//   - finetune: every weight of the base (model.BaseTrainer);
//   - scratch: a fresh base of the carry-on's own size (h = 64, L = 2, the
//     same vocabulary) trained on the problems' tokens.
var ClockKeys = []string{"cold", "cached", "lora", "finetune", "scratch"}

func knownClockMethods(keys []string) bool {
	for _, k := range keys {
		if !slices.Contains(ClockKeys, k) {
			return false
		}
	}
	return true
}

// clockExp: held-out loss against wall-clock seconds for the ClockKeys
// ways of spending the same budget (Sizes.ClockSeconds) on the same
// problems, each seeded with Sizes.ClockSeed. Validation passes are not on
// any method's clock; each keeps its best validation pass.
func (r *runner) clockExp() error {
	bc := r.base.Config
	seed := cmp.Or(r.sz.ClockSeed, 1)
	var got []ClockMethod
	measure := func(key string, train func() (ClockMethod, error)) error {
		if len(r.sz.ClockMethods) > 0 && !slices.Contains(r.sz.ClockMethods, key) {
			return nil
		}
		l0 := LoadAvg()
		m, err := train()
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		m.Key, m.Budget, m.Seed, m.Load, m.Date = key, r.sz.ClockSeconds, seed, [2]float64{l0, LoadAvg()}, time.Now().UTC().Format("2006-01-02 15:04")
		r.logf("clock %s (budget %.0f s, seed %d): %d params, %d steps, %.1f s (embedding %.1f, reads %.1f), loss %.4f, load %.2f–%.2f",
			key, m.Budget, seed, m.Params, m.Steps, m.Seconds, m.EmbedSeconds, m.ReadSeconds, m.Loss, m.Load[0], m.Load[1])
		got = append(got, m)
		return nil
	}
	if err := measure("cold", func() (ClockMethod, error) { return r.clockCarryOn(true, seed) }); err != nil {
		return err
	}
	if err := measure("cached", func() (ClockMethod, error) { return r.clockCarryOn(false, seed) }); err != nil {
		return err
	}
	err := measure("lora", func() (ClockMethod, error) {
		var lo *lora.Adapter
		m, err := r.trainBase(fmt.Sprintf("LoRA r=%d on the base", r.sz.LoRARank), func() (trainable, error) {
			tr, err := model.NewBaseTrainer(r.base, 2, bc.MaxPos)
			if err != nil {
				return nil, err
			}
			lo, err = lora.New(tr, lora.Config{Rank: r.sz.LoRARank, Seed: seed})
			return loraTrainable{lo}, err
		}, r.sz.LoRALR, 0, seed)
		if err == nil {
			r.tuned = append(r.tuned, tunedBase{name: m.Name, base: lo.Base()})
		}
		return m, err
	})
	if err != nil {
		return err
	}
	err = measure("finetune", func() (ClockMethod, error) {
		var ftr *model.BaseTrainer
		m, err := r.trainBase("full fine-tune of the base", func() (trainable, error) {
			var err error
			ftr, err = model.NewBaseTrainer(r.base, 2, bc.MaxPos)
			return fullTrainable{ftr}, err
		}, r.sz.FinetuneLR, 0.01, seed)
		if err == nil {
			r.tuned = append(r.tuned, tunedBase{name: m.Name, base: ftr.Base})
		}
		return m, err
	})
	if err != nil {
		return err
	}
	err = measure("scratch", func() (ClockMethod, error) {
		tiny := bc
		tiny.Dim, tiny.Layers, tiny.Heads, tiny.KVHeads, tiny.HeadDim, tiny.FFN = 64, 2, 4, 4, 16, 172
		return r.trainBase("h=64 L=2 from scratch", func() (trainable, error) {
			b, err := model.NewRandomBase(tiny, seed)
			if err != nil {
				return nil, err
			}
			model.InitTrainWeights(b, seed)
			tr, err := model.NewBaseTrainer(b, 2, bc.MaxPos)
			return fullTrainable{tr}, err
		}, r.sz.ScratchLR, 0.1, seed)
	})
	if err != nil {
		return err
	}
	r.res.Clock = mergeClock(r.res.Clock, got, r.res.Setup.BaseLoss)
	return nil
}

// mergeClock returns old's methods with those of got in place of the
// entries of the same method, budget and seed (entries of an older format,
// without a key, are dropped), ordered by budget, ClockKeys and seed.
func mergeClock(old *ClockResult, got []ClockMethod, baseLoss float64) *ClockResult {
	out := &ClockResult{BaseLoss: baseLoss}
	if old != nil {
		for _, m := range old.Methods {
			replaced := m.Key == "" || slices.ContainsFunc(got, func(g ClockMethod) bool {
				return g.Key == m.Key && g.Budget == m.Budget && g.Seed == m.Seed
			})
			if !replaced {
				out.Methods = append(out.Methods, m)
			}
		}
	}
	out.Methods = append(out.Methods, got...)
	slices.SortStableFunc(out.Methods, func(a, b ClockMethod) int {
		return cmp.Or(cmp.Compare(a.Budget, b.Budget), cmp.Compare(slices.Index(ClockKeys, a.Key), slices.Index(ClockKeys, b.Key)), cmp.Compare(a.Seed, b.Seed))
	})
	return out
}

// clockCarryOn trains the reference carry-on for the budget. Cold, the
// base's forward pass over the training and validation problems into a
// fresh cache is on its clock; cached, that cache is filled (from the
// run's shared forward pass) before the clock starts. Either way the clock
// then counts opening the cache and reading the splits (ReadSeconds) and
// the steps. The carry-on's cosine schedule needs its step count up
// front: it comes from the reference run's step and read times
// (experiment 1's carry-on), and a run whose clock ends more than 2% past
// the budget or 5% short of it is trained again (at most twice; the last
// try may end short), its count scaled by the step time it measured, so
// that no method gets more time than the others, nor much less.
func (r *runner) clockCarryOn(cold bool, seed uint64) (ClockMethod, error) {
	ref, err := r.carryOn(r.main("fit"))
	if err != nil {
		return ClockMethod{}, err
	}
	stepSec := ref.run.Phases.Steps / float64(ref.run.Steps)
	fixed := ref.run.Phases.Load // seconds on the clock besides the steps
	var m ClockMethod
	for try := range 3 {
		steps := max(1, int((r.sz.ClockSeconds-fixed)/stepSec))
		if try == 0 && cold {
			steps = 0 // known once the embedding is timed
		}
		if m, err = r.clockCarryOnOnce(cold, seed, steps, stepSec, fixed); err != nil {
			return m, err
		}
		fixed = m.EmbedSeconds + m.ReadSeconds
		if m.Seconds <= 1.02*r.sz.ClockSeconds && (m.Seconds >= 0.95*r.sz.ClockSeconds || try == 2) || m.Steps == 1 {
			break
		}
		r.logf("clock: carry-on off the budget (%d steps, %.1f s): again with the step count scaled", m.Steps, m.Seconds)
		stepSec = 1.01 * (m.Seconds - fixed) / float64(m.Steps)
	}
	return m, nil
}

// clockCarryOnOnce is one try of clockCarryOn with the given step count
// (0: from stepSec and the measured embedding plus fixed seconds).
func (r *runner) clockCarryOnOnce(cold bool, seed uint64, steps int, stepSec, fixed float64) (ClockMethod, error) {
	var m ClockMethod
	dir, err := os.MkdirTemp(r.cacheDir, "clock-*")
	if err != nil {
		return m, err
	}
	defer os.RemoveAll(dir)
	var fw coordinator.Forwarder = r.memo
	if cold {
		fw = nil // the real base
	}
	embed, err := timed(func() error { return fillCache(r.ctx, r.base, fw, dir, r.log, nil, r.fit) })
	if err != nil {
		return m, err
	}
	s := r.main("fit")
	s.seed, s.steps = seed, steps
	m.Name = "carry-on h=64 L=2, embedding cached"
	if cold {
		m.EmbedSeconds, m.Name = embed, "carry-on h=64 L=2, embedding cold"
	}
	if s.steps == 0 {
		s.steps = max(1, int((r.sz.ClockSeconds-m.EmbedSeconds-fixed)/stepSec))
	}
	t, err := trainCarryOn(r.ctx, r.base, r.memo, dir, r.log, r.fit, r.test, s, r.sz)
	if err != nil {
		return m, err
	}
	// The run's curve counts the time from the start of Train (its reads
	// included) to each validation pass, passes excluded.
	m.ReadSeconds = t.run.Phases.Open + t.run.Phases.Load
	m.Params, m.Steps, m.LR, m.Loss, m.BestStep = t.run.Params, s.steps, r.sz.LR, t.run.ValLoss, t.run.BestStep
	m.Curve.add(0, 0, r.res.Setup.BaseSelectLoss)
	for i := range t.run.Curve.Step {
		if t.run.Curve.Step[i] > 0 {
			m.Curve.add(t.run.Curve.Step[i], m.EmbedSeconds+t.run.Phases.Open+t.run.Curve.Seconds[i], t.run.Curve.Loss[i])
		}
	}
	m.Seconds = m.Curve.Seconds[len(m.Curve.Seconds)-1]
	m.StepMS = 1000 * t.run.Phases.Steps / float64(s.steps)
	return m, nil
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
func (r *runner) trainBase(name string, newTrainer func() (trainable, error), lr, wd float32, seed uint64) (ClockMethod, error) {
	m := ClockMethod{Name: name, LR: lr}
	train := sequences(r.fit.Train)
	val := sequences(r.fit.Val)
	test := sequences(r.test.Val)
	// Batches walk a fresh shuffle of the problems each epoch.
	batch := func(step int) [][]int32 {
		seqs := make([][]int32, r.sz.Batch)
		for i := range seqs {
			k := (step-1)*r.sz.Batch + i
			perm := rand.New(rand.NewPCG(seed, uint64(k/len(train)))).Perm(len(train))
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
	return m, nil
}
