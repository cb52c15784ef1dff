// Package lora trains low-rank adapters (LoRA, Hu et al. 2021) on a base
// model's attention and MLP projections: each targeted weight W (out × in)
// becomes W0 + s·B·A with A (r × in) and B (out × r) trained and W0
// frozen; embeddings, norms and biases stay frozen. It is the baseline the
// experiments compare the carry-on with (internal/experiments).
//
// The adapter runs through model.BaseTrainer: before each pass it writes
// the merged weights W0 + s·B·A into the trainer's base, lets the
// trainer's backward compute dL/dW for the merged weight, and projects it:
//
//	dB = s · dW · Aᵀ     (out × r)
//	dA = s · Bᵀ · dW     (r × in)
//
// This is exact (W is linear in A and B), but it pays for the full dW that
// the trainer computes for every weight: a fused LoRA kernel would skip
// those products (about a third of a linear layer's backward), so this
// adapter's step time is the full fine-tune's, an upper bound on LoRA's.
package lora

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"carryon/model"
	"carryon/tensor"
)

// Config configures an adapter.
type Config struct {
	Rank int // r ≥ 1
	// Alpha sets the scale s = Alpha/Rank (LoRA's lora_alpha). Default
	// 2·Rank (s = 2).
	Alpha float32
	Seed  uint64 // initialisation of A (B starts at zero)
	// Targets are the projections adapted, by the last part of their HF
	// name before ".weight". Default: q_proj, k_proj, v_proj, o_proj,
	// gate_proj, up_proj, down_proj (every attention and MLP projection).
	Targets []string
}

// DefaultTargets are every attention and MLP projection of a Qwen2/Llama
// block.
var DefaultTargets = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// Adapter is the trained state: one (A, B) pair per targeted weight.
type Adapter struct {
	Config
	scale float32
	tr    *model.BaseTrainer
	mats  []*mat
	step  int
}

// mat is one adapted weight.
type mat struct {
	name           string
	idx            int // in tr.Params()
	out, in        int
	w0             []float32 // (out, in) frozen
	a, b           []float32 // (r, in), (out, r)
	ga, gb         []float32 // gradients
	ma, va, mb, vb []float32 // AdamW moments
}

// New attaches an adapter to t's weights (which become W0). B = 0, so the
// merged model starts as the base; A ~ N(0, 1/in).
func New(t *model.BaseTrainer, cfg Config) (*Adapter, error) {
	if cfg.Rank < 1 {
		return nil, fmt.Errorf("lora.New: rank %d, want >= 1", cfg.Rank)
	}
	if cfg.Alpha == 0 {
		cfg.Alpha = 2 * float32(cfg.Rank)
	}
	if len(cfg.Targets) == 0 {
		cfg.Targets = DefaultTargets
	}
	c := t.Base.Config
	ad := &Adapter{Config: cfg, scale: cfg.Alpha / float32(cfg.Rank), tr: t}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x10ba))
	params := t.Params()
	for i, name := range t.ParamNames() {
		proj := ""
		for _, tg := range cfg.Targets {
			if strings.HasSuffix(name, "."+tg+".weight") {
				proj = tg
			}
		}
		if proj == "" {
			continue
		}
		in := c.Dim
		switch proj {
		case "o_proj":
			in = c.Heads * c.HeadDim
		case "down_proj":
			in = c.FFN
		}
		n := len(params[i])
		if n%in != 0 {
			return nil, fmt.Errorf("lora.New: %s has %d values, not a multiple of its input width %d", name, n, in)
		}
		r, out := cfg.Rank, n/in
		m := &mat{name: name, idx: i, out: out, in: in, w0: append([]float32(nil), params[i]...),
			a: make([]float32, r*in), b: make([]float32, out*r), ga: make([]float32, r*in), gb: make([]float32, out*r),
			ma: make([]float32, r*in), va: make([]float32, r*in), mb: make([]float32, out*r), vb: make([]float32, out*r)}
		sd := 1 / math.Sqrt(float64(in))
		for j := range m.a {
			m.a[j] = float32(rng.NormFloat64() * sd)
		}
		ad.mats = append(ad.mats, m)
	}
	if len(ad.mats) == 0 {
		return nil, errors.New("lora.New: no weight matches the targets")
	}
	return ad, nil
}

// NumParams is the number of trained values (every A and B).
func (ad *Adapter) NumParams() int {
	n := 0
	for _, m := range ad.mats {
		n += len(m.a) + len(m.b)
	}
	return n
}

// Params returns the trained tensors: each adapted weight's A then B.
func (ad *Adapter) Params() [][]float32 {
	var out [][]float32
	for _, m := range ad.mats {
		out = append(out, m.a, m.b)
	}
	return out
}

// Base is the merged model (valid after Merge, LossAndGrad or Loss).
func (ad *Adapter) Base() *model.Base { return ad.tr.Base }

// Merge writes W0 + s·B·A into the trainer's weights.
func (ad *Adapter) Merge() {
	params := ad.tr.Params()
	r := ad.Rank
	for _, m := range ad.mats {
		w := params[m.idx]
		copy(w, m.w0)
		for i := range m.out {
			row := w[i*m.in : (i+1)*m.in]
			for k := range r {
				c := ad.scale * m.b[i*r+k]
				if c == 0 {
					continue
				}
				axpy(c, m.a[k*m.in:(k+1)*m.in], row)
			}
		}
	}
}

// LossAndGrad merges, runs the trainer's forward and backward over seqs
// (mean next-token loss over all their positions, as
// BaseTrainer.LossAndGrad) and sets the gradients of A and B.
func (ad *Adapter) LossAndGrad(seqs [][]int32) (lossSum float64, count int, err error) {
	ad.Merge()
	lossSum, count, err = ad.tr.LossAndGrad(seqs)
	if err != nil {
		return 0, 0, fmt.Errorf("lora: %w", err)
	}
	grads := ad.tr.Grads()
	r := ad.Rank
	for _, m := range ad.mats {
		g := grads[m.idx] // (out, in): dL/dW
		clear(m.ga)
		for i := range m.out {
			grow := g[i*m.in : (i+1)*m.in]
			for k := range r {
				// dB[i,k] = s · Σ_j dW[i,j]·A[k,j]
				m.gb[i*r+k] = ad.scale * dot(grow, m.a[k*m.in:(k+1)*m.in])
				// dA[k,:] += s · B[i,k] · dW[i,:]
				if c := ad.scale * m.b[i*r+k]; c != 0 {
					axpy(c, grow, m.ga[k*m.in:(k+1)*m.in])
				}
			}
		}
	}
	return lossSum, count, nil
}

// Loss merges and runs the forward pass only.
func (ad *Adapter) Loss(seqs [][]int32) (lossSum float64, count int, err error) {
	ad.Merge()
	return ad.tr.Loss(seqs)
}

// Update clips the adapter's gradients to a global norm of maxNorm (if >
// 0) and takes one AdamW step (betas 0.9, 0.95, eps 1e-8, decoupled weight
// decay wd on A and B). It returns the norm before clipping.
func (ad *Adapter) Update(lr, wd float32, maxNorm float64) float64 {
	var gs [][]float32
	for _, m := range ad.mats {
		gs = append(gs, m.ga, m.gb)
	}
	norm := tensor.ClipGradNorm(maxNorm, gs...)
	ad.step++
	for _, m := range ad.mats {
		tensor.AdamWStep(m.a, m.ga, m.ma, m.va, ad.step, lr, 0.9, 0.95, 1e-8, wd)
		tensor.AdamWStep(m.b, m.gb, m.mb, m.vb, ad.step, lr, 0.9, 0.95, 1e-8, wd)
	}
	return norm
}

// axpy: y += c·x.
func axpy(c float32, x, y []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += c * v
	}
}

// dot is Σ x_i·y_i, accumulated in float64.
func dot(x, y []float32) float32 {
	y = y[:len(x)]
	var s float64
	for i, v := range x {
		s += float64(v) * float64(y[i])
	}
	return float32(s)
}
