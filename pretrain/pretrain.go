package pretrain

import (
	"carryon/model"
	"carryon/tensor"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

// GreedyGenerate appends n greedily chosen tokens to prompt (stopping early
// at stop, if stop >= 0, or at the context limit) and returns only the new
// tokens. Each step reruns the whole prefix: meant for short samples.
func GreedyGenerate(b *model.Base, prompt []int32, n int, stop int32) ([]int32, error) {
	ids := append([]int32(nil), prompt...)
	var out []int32
	for range n {
		if len(ids) >= b.Config.MaxPos {
			break
		}
		h, err := b.Forward(ids, []int{model.FinalLayer})
		if err != nil {
			return out, fmt.Errorf("model.GreedyGenerate: %w", err)
		}
		T, D := len(ids), b.Config.Dim
		logits := b.Logits(h[0][(T-1)*D:], 1)
		best := 0
		for j, z := range logits {
			if z > logits[best] {
				best = j
			}
		}
		if int32(best) == stop {
			break
		}
		ids = append(ids, int32(best))
		out = append(out, int32(best))
	}
	return out, nil
}

// Options are the settings of Pretrain. Every random choice (the
// initial weights and each step's batch) derives from Seed, so a run is
// reproducible from its options (see the note on workers above).
type Options struct {
	Config       model.Config // model shape; Vocab, BOS and EOS are set by Pretrain
	Seed         uint64       // weights and batches
	SeqLen       int          // tokens per training window
	Batch        int          // windows per step
	Steps        int          // total optimizer steps (the cosine schedule's length)
	Warmup       int          // linear warm-up steps
	LR, MinLR    float32      // peak and final learning rate
	WeightDecay  float32      // AdamW decoupled weight decay on matrices
	ClipNorm     float64      // global gradient-norm clip (0: none)
	Workers      int          // data-parallel goroutines
	EvalEvery    int          // steps between validation losses (0: only at the end)
	EvalWindows  int          // validation windows evaluated (at most; 0: all)
	CheckpointTo string       // directory for weights + optimizer state ("" = none)
	CkptEvery    int          // steps between checkpoints
	Deadline     time.Time
	Progress     func(Progress) // called after logged steps and evaluations; may be nil
	LogEvery     int
	// Init, if not nil, holds the weights to start from instead of fresh
	// ones (continued pretraining; with a longer SeqLen, context
	// extension). Its config must equal Config except for MaxPos and
	// RopeTheta; Seed then only draws the batches. A checkpoint in
	// CheckpointTo still takes precedence (it is the same run, resumed).
	Init *model.Base
}

// Progress reports one logged step or evaluation.
type Progress struct {
	Step      int
	TrainLoss float64 // mean loss of the step's batch (NaN for an evaluation-only report)
	ValLoss   float64 // NaN when not evaluated at this step
	LR        float32
	GradNorm  float64
	Tokens    int64   // training tokens processed so far (this run)
	TokPerSec float64 // over this run so far
	Elapsed   time.Duration
}

// Result summarises a Pretrain run.
type Result struct {
	Steps      int     // steps completed (Steps, or fewer at the deadline)
	TrainLoss  float64 // mean over the last 10 logged batches
	ValLoss    float64 // final validation loss (nats/token)
	Tokens     int64
	TokPerSec  float64
	Elapsed    time.Duration
	CutShort   bool // stopped at the deadline or by ctx
	ResumedAt  int  // step of the checkpoint resumed from (0 if none)
	Trainer    *model.BaseTrainer
	TrainCount int // training tokens in the stream
	ValCount   int
}

// Train trains a base from scratch or from Init (or from the checkpoint
// in CheckpointTo, if one is there) on the token streams: train is sampled in
// random windows of SeqLen+1 tokens, val is cut into consecutive windows.
func Train(ctx context.Context, o Options, train, val []int32) (*Result, error) {
	c := o.Config
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("model.Pretrain: %w", err)
	}
	if o.SeqLen < 2 || o.SeqLen > c.MaxPos || o.Batch < 1 || o.Steps < 1 || len(train) < o.SeqLen+1 || len(val) < o.SeqLen+1 {
		return nil, fmt.Errorf("model.Pretrain: seq %d, batch %d, steps %d, %d train and %d val tokens: want 2 <= seq <= MaxPos, batch and steps >= 1, more tokens than seq", o.SeqLen, o.Batch, o.Steps, len(train), len(val))
	}
	o.Workers = max(1, o.Workers)
	o.LogEvery = max(1, o.LogEvery)
	var tr *model.BaseTrainer
	res := &Result{TrainCount: len(train), ValCount: len(val)}
	ckptState := filepath.Join(o.CheckpointTo, "optim.safetensors")
	if o.CheckpointTo != "" {
		if _, err := os.Stat(ckptState); err == nil {
			b, err := model.LoadBase(o.CheckpointTo)
			if err != nil {
				return nil, fmt.Errorf("model.Pretrain: resume: %w", err)
			}
			if b.Config != c {
				b.Close()
				return nil, fmt.Errorf("model.Pretrain: resume: checkpoint %s has config %+v, want %+v", o.CheckpointTo, b.Config, c)
			}
			tr, err = model.NewBaseTrainer(b, o.Workers, o.SeqLen)
			b.Close()
			if err != nil {
				return nil, fmt.Errorf("model.Pretrain: resume: %w", err)
			}
			if err := tr.LoadState(ckptState); err != nil {
				return nil, fmt.Errorf("model.Pretrain: resume: %w", err)
			}
			res.ResumedAt = tr.StepCount()
		}
	}
	if tr == nil && o.Init != nil {
		ic := o.Init.Config
		ic.MaxPos, ic.RopeTheta = c.MaxPos, c.RopeTheta
		if ic != c {
			return nil, fmt.Errorf("model.Pretrain: init model has config %+v, want %+v (only MaxPos and RopeTheta may differ)", o.Init.Config, c)
		}
		b, err := o.Init.WithContext(c.MaxPos, c.RopeTheta)
		if err != nil {
			return nil, fmt.Errorf("model.Pretrain: %w", err)
		}
		if tr, err = model.NewBaseTrainer(b, o.Workers, o.SeqLen); err != nil {
			return nil, fmt.Errorf("model.Pretrain: %w", err)
		}
	}
	if tr == nil {
		b, err := model.NewRandomBase(c, o.Seed)
		if err != nil {
			return nil, fmt.Errorf("model.Pretrain: %w", err)
		}
		model.InitTrainWeights(b, o.Seed)
		if tr, err = model.NewBaseTrainer(b, o.Workers, o.SeqLen); err != nil {
			return nil, fmt.Errorf("model.Pretrain: %w", err)
		}
	}
	res.Trainer = tr
	var valSeqs [][]int32
	for s := 0; s+o.SeqLen+1 <= len(val); s += o.SeqLen {
		valSeqs = append(valSeqs, val[s:s+o.SeqLen+1])
	}
	if o.EvalWindows > 0 && len(valSeqs) > o.EvalWindows {
		// Spread the evaluated windows over the whole split.
		pick := make([][]int32, o.EvalWindows)
		for i := range pick {
			pick[i] = valSeqs[i*len(valSeqs)/o.EvalWindows]
		}
		valSeqs = pick
	}
	evalVal := func() (float64, error) {
		var sum float64
		var n int
		for i := 0; i < len(valSeqs); i += 4 * o.Workers {
			l, k, err := tr.Loss(valSeqs[i:min(len(valSeqs), i+4*o.Workers)])
			if err != nil {
				return 0, err
			}
			sum += l
			n += k
		}
		return sum / float64(n), nil
	}
	start := time.Now()
	var recent []float64
	seqs := make([][]int32, o.Batch)
	for tr.StepCount() < o.Steps {
		if ctx.Err() != nil || !o.Deadline.IsZero() && time.Now().After(o.Deadline) {
			res.CutShort = true
			break
		}
		step := tr.StepCount() + 1
		rng := rand.New(rand.NewPCG(o.Seed, uint64(step)))
		for i := range seqs {
			s := rng.IntN(len(train) - o.SeqLen)
			seqs[i] = train[s : s+o.SeqLen+1]
		}
		l, n, err := tr.LossAndGrad(seqs)
		if err != nil {
			return nil, fmt.Errorf("model.Pretrain: step %d: %w", step, err)
		}
		loss := l / float64(n)
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return nil, fmt.Errorf("model.Pretrain: step %d: loss is %v", step, loss)
		}
		lr := tensor.CosineLR(step, o.Warmup, o.Steps, o.LR, o.MinLR)
		gn := tr.Update(lr, o.WeightDecay, o.ClipNorm)
		res.Tokens += int64(n)
		recent = append(recent, loss)
		if len(recent) > 10 {
			recent = recent[1:]
		}
		el := time.Since(start)
		p := Progress{Step: step, TrainLoss: loss, ValLoss: math.NaN(), LR: lr, GradNorm: gn,
			Tokens: res.Tokens, TokPerSec: float64(res.Tokens) / el.Seconds(), Elapsed: el}
		if o.EvalEvery > 0 && step%o.EvalEvery == 0 {
			if p.ValLoss, err = evalVal(); err != nil {
				return nil, fmt.Errorf("model.Pretrain: %w", err)
			}
		}
		if o.Progress != nil && (step%o.LogEvery == 0 || !math.IsNaN(p.ValLoss) || step == 1) {
			o.Progress(p)
		}
		if o.CheckpointTo != "" && o.CkptEvery > 0 && step%o.CkptEvery == 0 {
			if err := tr.SaveCheckpoint(o.CheckpointTo); err != nil {
				return nil, fmt.Errorf("model.Pretrain: %w", err)
			}
		}
	}
	res.Steps = tr.StepCount()
	res.Elapsed = time.Since(start)
	res.TokPerSec = float64(res.Tokens) / res.Elapsed.Seconds()
	for _, l := range recent {
		res.TrainLoss += l / float64(len(recent))
	}
	var err error
	if res.ValLoss, err = evalVal(); err != nil {
		return nil, fmt.Errorf("model.Pretrain: %w", err)
	}
	if o.CheckpointTo != "" {
		if err := tr.SaveCheckpoint(o.CheckpointTo); err != nil {
			return nil, fmt.Errorf("model.Pretrain: %w", err)
		}
	}
	return res, nil
}

// UnigramLoss is the cross-entropy (nats/token) of val under the unigram
// distribution of train with add-one smoothing over vocab ids: the loss a
// model that ignores context would reach.
func UnigramLoss(train, val []int32, vocab int) float64 {
	counts := make([]float64, vocab)
	for _, id := range train {
		counts[id]++
	}
	total := float64(len(train) + vocab)
	var sum float64
	for _, id := range val {
		sum -= math.Log((counts[id] + 1) / total)
	}
	return sum / float64(len(val))
}
