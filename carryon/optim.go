package carryon

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"carryon/tensor"
)

// OptimConfig configures the carry-on's AdamW optimiser (docs/method.md):
// linear warm-up then cosine decay, and global-norm gradient clipping.
type OptimConfig struct {
	LR, MinLR   float32 // peak and final learning rate
	Warmup      int     // steps of linear warm-up from 0 to LR
	Total       int     // step at which the cosine reaches MinLR
	Beta1       float32
	Beta2       float32
	Eps         float32
	WeightDecay float32 // decoupled; applied to matrices only (not norms or biases)
	ClipNorm    float64 // global L2 norm cap; 0 disables clipping
	// Moments8bit keeps AdamW's moments in bitsandbytes' 8-bit blockwise
	// form (tensor.AdamW8Step: 2.03 bytes per parameter for both instead of
	// 8) in Optimizer.M8; M and V stay nil. The master weights stay
	// float32 (Params): an update of lr·m/√v ≈ 1e-4 relative to a weight is
	// below bf16's resolution (2⁻⁸), so bf16 masters would drop most
	// updates. Checkpoints (coordinator) need the float32 moments.
	Moments8bit bool
}

// DefaultOptimConfig returns the defaults for a run of total steps: LR 1e-3
// decaying to 1e-4, 5% warm-up (at least 1 step), β = (0.9, 0.95),
// eps 1e-8, weight decay 0.01, clipping at 1.
func DefaultOptimConfig(total int) OptimConfig {
	return OptimConfig{
		LR: 1e-3, MinLR: 1e-4,
		Warmup: max(1, total/20), Total: total,
		Beta1: 0.9, Beta2: 0.95, Eps: 1e-8,
		WeightDecay: 0.01, ClipNorm: 1,
	}
}

// Validate checks every field; errors name the field and bound.
func (o OptimConfig) Validate() error {
	bad := func(field string, v any, want string) error {
		return fmt.Errorf("model.OptimConfig: %s = %v, want %s", field, v, want)
	}
	finite := func(x float32) bool { return !math.IsNaN(float64(x)) && !math.IsInf(float64(x), 0) }
	switch {
	case !finite(o.LR) || o.LR <= 0:
		return bad("LR", o.LR, "a finite value > 0")
	case !finite(o.MinLR) || o.MinLR < 0 || o.MinLR > o.LR:
		return bad("MinLR", o.MinLR, "within [0, LR]")
	case o.Total < 1:
		return bad("Total", o.Total, ">= 1")
	case o.Warmup < 0 || o.Warmup > o.Total:
		return bad("Warmup", o.Warmup, "within [0, Total]")
	case !(o.Beta1 >= 0 && o.Beta1 < 1):
		return bad("Beta1", o.Beta1, "within [0, 1)")
	case !(o.Beta2 >= 0 && o.Beta2 < 1):
		return bad("Beta2", o.Beta2, "within [0, 1)")
	case !(o.Eps > 0) || !finite(o.Eps):
		return bad("Eps", o.Eps, "a finite value > 0")
	case !(o.WeightDecay >= 0) || !finite(o.WeightDecay) || o.WeightDecay*o.LR >= 1:
		return bad("WeightDecay", o.WeightDecay, "within [0, 1/LR)")
	case !(o.ClipNorm >= 0) || math.IsInf(o.ClipNorm, 0):
		return bad("ClipNorm", o.ClipNorm, "a finite value >= 0")
	}
	return nil
}

// Optimizer is AdamW over a carry-on's Params. M and V are laid out like
// Params; Steps counts the updates taken. Persist all three to resume.
type Optimizer struct {
	Config OptimConfig
	M, V   []float32
	M8     []*tensor.AdamW8State // the moments when Config.Moments8bit, one per tensor
	Steps  int
	model  *Model
}

// NewOptimizer makes an optimiser for c with zero moments.
func NewOptimizer(c *Model, cfg OptimConfig) (*Optimizer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("model.NewOptimizer: %w", err)
	}
	if cfg.Moments8bit {
		o := &Optimizer{Config: cfg, model: c}
		for _, t := range c.tensors {
			o.M8 = append(o.M8, tensor.NewAdamW8State(t.Numel()))
		}
		return o, nil
	}
	return &Optimizer{Config: cfg, M: make([]float32, len(c.Params)), V: make([]float32, len(c.Params)), model: c}, nil
}

// LR returns the learning rate the next Step will use.
func (o *Optimizer) LR() float32 {
	cfg := o.Config
	return tensor.CosineLR(o.Steps+1, cfg.Warmup, cfg.Total, cfg.LR, cfg.MinLR)
}

// Step clips grads (laid out like Params) in place to the global norm
// Config.ClipNorm, applies one AdamW update to the model's Params, and
// returns the gradient norm before clipping. The caller zeroes grads
// before accumulating the next step.
func (o *Optimizer) Step(grads []float32) (gradNorm float64) {
	c := o.model
	if len(grads) != len(c.Params) {
		panic(fmt.Sprintf("model.Optimizer.Step: grads has %d values, want %d", len(grads), len(c.Params)))
	}
	cfg := o.Config
	gradNorm = tensor.ClipGradNorm(cfg.ClipNorm, grads)
	lr := o.LR()
	o.Steps++
	if o.M8 != nil {
		o.step8(grads, lr)
		return gradNorm
	}
	// The update is elementwise: cut Params into equal ranges, one per
	// core (for large carry-ons), each walking the tensors it overlaps.
	n := len(c.Params)
	w := max(1, min(runtime.GOMAXPROCS(0), n/optimMinPerCore))
	part := func(lo, hi int) {
		for _, t := range c.tensors {
			a, b := max(lo, t.Offset), min(hi, t.Offset+t.Numel())
			if a >= b {
				continue
			}
			wd := float32(0)
			if t.Decay {
				wd = cfg.WeightDecay
			}
			tensor.AdamWStep(c.Params[a:b], grads[a:b], o.M[a:b], o.V[a:b], o.Steps, lr, cfg.Beta1, cfg.Beta2, cfg.Eps, wd)
		}
	}
	splitRun(n, w, part)
	return gradNorm
}

// step8 is the update with 8-bit moments: every tensor through
// updateTensor.
func (o *Optimizer) step8(grads []float32, lr float32) {
	for ti, t := range o.model.tensors {
		o.updateTensor(ti, grads[t.Offset:t.Offset+t.Numel()], lr)
	}
}

// updateTensor applies the AdamW update of step o.Steps (already counted)
// with learning rate lr to tensor ti of the model, whose gradient is g,
// over all cores for a large tensor: float32 moments through
// tensor.AdamWStep, 8-bit ones (blocks counted from the tensor's start)
// through weight decay p·(1 − lr·wd) then tensor.AdamW8Step.
func (o *Optimizer) updateTensor(ti int, g []float32, lr float32) {
	c, cfg := o.model, o.Config
	t := c.tensors[ti]
	p := c.Params[t.Offset : t.Offset+t.Numel()]
	wd := float32(0)
	if t.Decay {
		wd = cfg.WeightDecay
	}
	n := len(p)
	const blk = tensor.AdamW8Block
	nb := (n + blk - 1) / blk
	w := max(1, min(runtime.GOMAXPROCS(0), n/optimMinPerCore, nb))
	part := func(bl, bh int) {
		lo, hi := bl*blk, min(n, bh*blk)
		if lo >= hi {
			return
		}
		if o.M8 == nil {
			tensor.AdamWStep(p[lo:hi], g[lo:hi], o.M[t.Offset+lo:t.Offset+hi], o.V[t.Offset+lo:t.Offset+hi], o.Steps, lr, cfg.Beta1, cfg.Beta2, cfg.Eps, wd)
			return
		}
		if wd > 0 {
			tensor.Scale(p[lo:hi], 1-lr*wd)
		}
		tensor.AdamW8Step(p[lo:hi], g[lo:hi], o.M8[ti], lo, o.Steps, lr, cfg.Beta1, cfg.Beta2, cfg.Eps, 0)
	}
	splitRun(nb, w, part)
}

// splitRun cuts [0, n) into w equal ranges and runs part on each, the
// first on this goroutine and the others on their own, and waits for all.
func splitRun(n, w int, part func(lo, hi int)) {
	if w == 1 {
		part(0, n)
		return
	}
	var wg sync.WaitGroup
	for i := 1; i < w; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); part(i*n/w, (i+1)*n/w) }()
	}
	part(0, n/w)
	wg.Wait()
}

// optimMinPerCore is the number of parameters below which another core
// does not join the AdamW update.
const optimMinPerCore = 1 << 16
