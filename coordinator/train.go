package coordinator

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
	"carryon/tensor"
)

// StepInfo reports one optimiser step.
type StepInfo struct {
	Step         int
	Loss         float64 // mean cross-entropy per trained token in this step's batch
	LR           float32
	GradNorm     float64 // before clipping
	TokensPerSec float64 // trained positions per second, this step
}

// EvalInfo reports one validation pass.
type EvalInfo struct {
	Step     int
	Loss     float64 // mean answer-token cross-entropy with the carry-on
	BaseLoss float64 // the same for the base alone (α = 0)
	Tokens   int
	// Restored marks a pass of an earlier process, read back from the
	// checkpoint this run resumed from (Train hands those to Hooks.Eval
	// first, so that a resumed run still shows its validation loss).
	Restored bool `json:"-"`
}

// TrainResult is a trained adaptor and its history.
type TrainResult struct {
	CarryOn *carryon.Model
	Steps   []StepInfo // the steps taken by this call (after Resumed)
	Evals   []EvalInfo // every validation pass of the run, restored ones included
	Meta    carryon.Meta
	Resumed int // the checkpoint step this call resumed from; 0 for a fresh start
	Best    int // the step whose weights CarryOn holds (the last step unless TrainConfig.KeepBest chose an earlier one)
	// Stopped is the step at which Hooks.Stop or Hooks.Pause ended
	// training (0: it ran all TrainConfig.Steps).
	Stopped int
	Timing  Timing
}

// Timing is where a Train call spent its wall time.
type Timing struct {
	Load  time.Duration // reading the splits' cached embeddings from the store, a parent chain, the carry-on's set-up
	Steps time.Duration // optimiser steps
	Eval  time.Duration // validation passes (the base-alone loss included)
	Alpha time.Duration // the α grid (TrainConfig.AlphaGrid)
}

// Hooks observe a Run (and a Train). Any may be nil.
type Hooks struct {
	Collecting func(cached, total int) // before collection: chunks already cached, of all
	Progress   func(Progress)
	Resumed    func(step int) // training resumes from a checkpoint taken after step
	Step       func(StepInfo)
	Eval       func(EvalInfo)
	Checkpoint func(step int) // a checkpoint after step is on disk
	Parent     string         // parent adaptor CID for a boosting stage ("" for the first)
	// Stop, when set, is asked after each validation pass (after Eval);
	// true ends training at that step, as if it were the last
	// (TrainResult.Stopped): a search drops a trial that is falling
	// behind. A stopped run keeps its training α (no AlphaGrid).
	Stop func(EvalInfo) bool
	// Pause, when set, is asked after each step before the last (after
	// any validation pass and Stop); true ends training there
	// (TrainResult.Stopped) without a validation pass or an α grid, with
	// the run checkpointed when checkpoints are on (CheckpointEvery > 0),
	// so that a later Train of the same configuration resumes it exactly:
	// a search's successive halving pauses every trial at a rung and
	// resumes only the best.
	Pause func(step int) bool
}

// seqData is one training sequence with its cached bridged sources.
type seqData struct {
	targets []int32
	sources []Entry // one per source: the primary base's Config.Layers, then each mixed base's layers
	count   int     // trained positions
}

// loadSplit reads the cached embeddings of chunks (never the network):
// every source of the carry-on, the mixed bases' after the primary's.
func (c *Coordinator) loadSplit(chunks []*dataset.Chunk) ([]seqData, error) {
	var out []seqData
	jobs := c.allJobs()
	for _, ch := range chunks {
		var per [][]Entry
		for _, job := range jobs {
			for _, l := range job.Layers {
				es, err := c.cachedEntries(job.key(l, ch))
				if err != nil {
					return nil, err
				}
				if len(es) != len(ch.Seqs) {
					return nil, fmt.Errorf("coordinator: cache entry %s holds %d sequences, want %d", short(ch.ID), len(es), len(ch.Seqs))
				}
				per = append(per, es)
			}
		}
		for j, ex := range ch.Seqs {
			sd := seqData{targets: ex.Targets(), sources: make([]Entry, 0, len(per))}
			for i := range per {
				e := per[i][j]
				if e.Rows != len(ex.Tokens) {
					return nil, fmt.Errorf("coordinator: cache entry %s sequence %d has %d rows, want %d", short(ch.ID), j, e.Rows, len(ex.Tokens))
				}
				sd.sources = append(sd.sources, e)
			}
			for _, t := range sd.targets {
				if t >= 0 {
					sd.count++
				}
			}
			if sd.count > 0 {
				out = append(out, sd)
			}
		}
	}
	return out, nil
}

// cachedEntries reads the cache item k, from the memory that the
// process's coordinators on this cache share when Config.ShareReads is set
// (a cache item never changes: its key names the base, the codec, the
// chunk and the layer).
func (c *Coordinator) cachedEntries(k Key) ([]Entry, error) {
	if !c.cfg.ShareReads {
		return c.cache.Get(k)
	}
	if es, ok := c.state.reads.Load(k); ok {
		return es.([]Entry), nil
	}
	es, err := c.cache.Get(k)
	if err != nil {
		return nil, err
	}
	c.state.reads.Store(k, es)
	return es, nil
}

// sourceCodecs is the bridge codec of each source, in seqData.sources order.
func (c *Coordinator) sourceCodecs() []tensor.Codec {
	var out []tensor.Codec
	for _, job := range c.allJobs() {
		for range job.Layers {
			out = append(out, job.Codec)
		}
	}
	return out
}

// carryOnConfig completes the configured shape from the base and the job:
// the primary base's layers are sources "final" and "layer:k", a mixed
// base's "base:<hash>:final" and "base:<hash>:layer:k" (mixSourceName).
func (c *Coordinator) carryOnConfig(maxSeq int) carryon.Config {
	bc := c.base.Config
	cfg := c.cfg.Train.CarryOn
	if cfg.Width == 0 {
		cfg = carryon.DefaultConfig(bc.Dim, bc.Vocab)
	}
	cfg.Vocab = bc.Vocab
	cfg.MaxSeq = max(cfg.MaxSeq, maxSeq)
	cfg.Sources = nil
	for _, l := range c.cfg.Layers {
		name := "final"
		if l != model.FinalLayer {
			name = "layer:" + strconv.Itoa(l)
		}
		cfg.Sources = append(cfg.Sources, carryon.Source{Name: name, Dim: bc.Dim})
	}
	for _, j := range c.mixJobs() {
		for _, l := range j.Layers {
			cfg.Sources = append(cfg.Sources, carryon.Source{Name: mixSourceName(j.Base, l), Dim: j.Dim})
		}
	}
	return cfg
}

// decoder turns cached entries into float32 sources, reusing buffers. For
// a boosting stage it also runs the earlier stages (chain, root first) on
// them: the new stage's primary source is then the chain's output y, as at
// inference (carryon.ForwardStages), and its shortcut sources stay the base's.
type decoder struct {
	c      *Coordinator
	codecs []tensor.Codec // per source (sourceCodecs)
	buf    [][]float32    // decoded sources, in seqData.sources order
	chain  []*chainStage
	x      []float32   // the chain's output
	out    [][]float32 // what the trainer sees
}

// chainStage is one earlier carry-on stage and where its sources come from.
type chainStage struct {
	co  *carryon.Model
	ws  *carryon.Workspace
	src []int // per source: index into Config.Layers (source 0 is the running y)
	in  [][]float32
}

func (d *decoder) sources(sd seqData) ([][]float32, error) {
	if d.buf == nil {
		d.buf = make([][]float32, len(sd.sources))
		d.out = make([][]float32, len(sd.sources))
		d.codecs = d.c.sourceCodecs()
	}
	for i, e := range sd.sources {
		n := e.Rows * e.Dim
		if cap(d.buf[i]) < n {
			d.buf[i] = make([]float32, n)
		}
		d.buf[i] = d.buf[i][:n]
		if err := d.codecs[i].Decode(d.buf[i], e.Data, e.Rows, e.Dim); err != nil {
			return nil, err
		}
	}
	copy(d.out, d.buf)
	if len(d.chain) == 0 {
		return d.out, nil
	}
	T := len(sd.targets)
	y := d.buf[0]
	for _, st := range d.chain {
		for j, idx := range st.src {
			st.in[j] = d.buf[idx]
		}
		st.in[0] = y
		y = st.co.Forward(st.ws, st.in, T, st.co.Config.Alpha) // lives in st.ws until its next Forward
	}
	d.x = append(d.x[:0], y...)
	d.out[0] = d.x
	return d.out, nil
}

// parentChain loads the adaptor parent (a CID in the store) and its own
// parents, root first, checking that each was made for this base, fits the
// data's sequences and reads only layers this job collects.
func (c *Coordinator) parentChain(parent string, maxSeq int) ([]*chainStage, error) {
	stages, err := carryon.ResolveChain(parent, func(p string) ([]byte, error) {
		id, err := protocol.ParseCID(p)
		if err != nil {
			return nil, fmt.Errorf("parent %q: %w", p, err)
		}
		data, err := c.store.Get(context.Background(), id, 0)
		if err != nil {
			if hint := protocol.OldRawCIDHint(id); errors.Is(err, swarm.ErrNotFound) && hint != "" {
				return nil, fmt.Errorf("%w (%s)", err, hint)
			}
			return nil, err
		}
		return data, nil
	}, c.base)
	if err != nil {
		return nil, fmt.Errorf("parent: %w", err)
	}
	for _, st := range stages {
		if st.Model.Config.MaxSeq < maxSeq {
			return nil, fmt.Errorf("parent %s handles sequences of %d tokens, the data has %d", st.CID, st.Model.Config.MaxSeq, maxSeq)
		}
	}
	cos := carryon.Models(stages)
	layers, srcIdx, err := carryon.StageLayers(c.base, cos)
	if err != nil {
		return nil, err
	}
	chain := make([]*chainStage, len(cos))
	for i, co := range cos {
		st := &chainStage{co: co, ws: co.NewWorkspace(maxSeq), in: make([][]float32, len(co.Config.Sources))}
		for _, li := range srcIdx[i] {
			at := slices.Index(c.cfg.Layers, layers[li])
			if at < 0 {
				return nil, fmt.Errorf("parent stage %d reads base layer %d, which this job does not collect (Config.Layers %v)", i, layers[li], c.cfg.Layers)
			}
			st.src = append(st.src, at)
		}
		chain[i] = st
	}
	return chain, nil
}

// Train trains a carry-on on the cached embeddings of ds (Collect first).
// With hooks.Parent (an adaptor CID in the store) it trains a boosting
// stage: the new carry-on starts from, and corrects, the output of the
// parent chain (EvalInfo.BaseLoss is then the chain's loss, the new stage
// at α = 0), and records the parent in its metadata. The other hooks may
// be nil.
//
// Unless Config.Train.CheckpointEvery is negative, the state of the run
// (parameters, optimiser moments, batch position, evals) is checkpointed
// to CacheDir/checkpoints/<job>/ every CheckpointEvery steps and at the
// end, and a run whose configuration, data and base match a checkpoint on
// disk resumes from the newest one: the result is bit-identical to an
// uninterrupted run.
func (c *Coordinator) Train(ctx context.Context, ds *dataset.Set, hooks Hooks) (*TrainResult, error) {
	tc := c.cfg.Train
	start := time.Now()
	train, err := c.loadSplit(ds.Train)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Train: %w", err)
	}
	val, err := c.loadSplit(ds.Val)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Train: %w", err)
	}
	if len(train) == 0 {
		return nil, fmt.Errorf("coordinator.Train: no training sequence with trained tokens")
	}
	maxSeq := 0
	for _, s := range append(append([]seqData(nil), train...), val...) {
		maxSeq = max(maxSeq, len(s.targets))
	}
	co, err := carryon.New(c.carryOnConfig(maxSeq), tc.Seed)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Train: %w", err)
	}
	for i := range co.Weights.GateBias {
		co.Weights.GateBias[i] = tc.GateBias // g = sigmoid(b_g) at the start
	}
	opt, err := carryon.NewOptimizer(co, tc.Optim)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Train: %w", err)
	}
	key, err := c.runKey(ds, co.Config, hooks.Parent)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Train: %w", err)
	}
	ckpts := checkpoints{dir: filepath.Join(c.cfg.CacheDir, "checkpoints", c.job(ds).ID), key: key, state: c.state}
	state := Checkpoint{RunKey: key}
	res := &TrainResult{CarryOn: co}
	if tc.CheckpointEvery > 0 {
		ck, ok, skipped := ckpts.latest(co, opt, tc.Steps)
		for _, e := range skipped {
			c.log.Warn("checkpoint not used", "err", e)
		}
		if ok {
			state, res.Resumed = ck, ck.Step
			c.log.Info("resuming training from a checkpoint", "step", ck.Step, "run", key[:16])
			if hooks.Resumed != nil {
				hooks.Resumed(ck.Step)
			}
		}
	}
	res.Evals = state.Evals
	if hooks.Eval != nil {
		for _, ev := range state.Evals {
			ev.Restored = true
			hooks.Eval(ev)
		}
	}
	c.log.Info("training carry-on", "params", len(co.Params), "width", co.Config.Width, "layers", co.Config.Layers,
		"train_seqs", len(train), "val_seqs", len(val), "steps", tc.Steps, "batch", tc.BatchSeqs, "from_step", state.Step)
	chain, err := c.parentChain(hooks.Parent, maxSeq)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Train: %w", err)
	}
	trainRows := batchRows(co.Config, maxSeq, tc.BatchSeqs)
	t := &trainer{c: c, co: co, ws: co.NewBatchWorkspace(maxSeq, max(trainRows, evalRows(co.Config, val))), trainRows: trainRows,
		wPred: c.base.LMHead(), dec: &decoder{c: c, chain: chain}, baseKey: c.baseLossKey(ds.Val, hooks.Parent)}
	t.ws.HeadBF16 = tc.headBF16()
	if tc.Device != nil {
		dev, err := carryon.NewDeviceTrainer(tc.Device, co, opt, t.wPred, maxSeq, trainRows)
		if err != nil {
			return nil, fmt.Errorf("coordinator.Train: %w", err)
		}
		defer dev.Close()
		t.dev = dev
		c.log.Info("training on a device", "device", tc.Device.Name())
	} else {
		t.grads = make([]float32, len(co.Params))
	}
	order := epochOrder(tc.Seed, state.Epoch, len(train))
	res.Timing.Load = time.Since(start)
	var best []float32 // the parameters of the best validation pass (KeepBest), over the whole run
	bestLoss, bestStep := math.Inf(1), 0
	if tc.KeepBest && state.Best != nil {
		best, bestLoss, bestStep = state.Best, state.BestLoss, state.BestStep
	}
	lastLoss := math.NaN() // of the last validation pass (at the last step taken)
	last := tc.Steps       // the last step taken
	for step := state.Step + 1; step <= tc.Steps; step++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("coordinator.Train: %w", err)
		}
		batch := make([]seqData, 0, tc.BatchSeqs)
		for len(batch) < tc.BatchSeqs {
			if state.Next == len(order) {
				state.Epoch, state.Next = state.Epoch+1, 0
				order = epochOrder(tc.Seed, state.Epoch, len(train))
			}
			batch = append(batch, train[order[state.Next]])
			state.Next++
		}
		t0 := time.Now()
		info, err := t.step(batch, opt)
		if err != nil {
			return nil, fmt.Errorf("coordinator.Train: step %d: %w", step, err)
		}
		res.Timing.Steps += time.Since(t0)
		info.Step = step
		state.Step, state.Loss = step, info.Loss
		res.Steps = append(res.Steps, info)
		if hooks.Step != nil {
			hooks.Step(info)
		}
		if len(val) > 0 && (step%tc.EvalEvery == 0 || step == tc.Steps) {
			t0 := time.Now()
			ev, err := t.eval(val)
			if err != nil {
				return nil, fmt.Errorf("coordinator.Train: eval: %w", err)
			}
			res.Timing.Eval += time.Since(t0)
			ev.Step = step
			if tc.KeepBest && ev.Loss < bestLoss {
				best = append(best[:0], co.Params...)
				bestLoss, bestStep = ev.Loss, step
				state.Best, state.BestLoss, state.BestStep = best, bestLoss, bestStep
			}
			res.Evals = append(res.Evals, ev)
			state.Evals = res.Evals
			lastLoss = ev.Loss
			if hooks.Eval != nil {
				hooks.Eval(ev)
			}
			if step < tc.Steps && hooks.Stop != nil && hooks.Stop(ev) {
				last, res.Stopped = step, step
				break
			}
		}
		pause := step < tc.Steps && hooks.Pause != nil && hooks.Pause(step)
		if tc.CheckpointEvery > 0 && (step%tc.CheckpointEvery == 0 || step == tc.Steps || pause) {
			if err := ckpts.save(state, co, opt); err != nil {
				return nil, fmt.Errorf("coordinator.Train: %w", err)
			}
			if hooks.Checkpoint != nil {
				hooks.Checkpoint(step)
			}
		}
		if pause {
			last, res.Stopped = step, step
			break
		}
	}
	// A run resumed at its last step from a checkpoint without the final
	// validation pass (an older checkpoint) takes no step: evaluate the
	// parameters it has, so that the adaptor still reports val_loss.
	if len(val) > 0 && res.Stopped == 0 && (len(res.Evals) == 0 || res.Evals[len(res.Evals)-1].Step != state.Step) {
		ev, err := t.eval(val)
		if err != nil {
			return nil, fmt.Errorf("coordinator.Train: eval: %w", err)
		}
		ev.Step = state.Step
		res.Evals = append(res.Evals, ev)
		if hooks.Eval != nil {
			hooks.Eval(ev)
		}
	}
	res.Meta = carryon.Meta{BaseHash: c.base.WeightsHash, Parent: hooks.Parent, Bridge: c.codec.String(),
		DataHash: ds.Hash, Step: last, Metrics: map[string]float64{"train_loss": state.Loss}}
	if n := len(res.Evals); n > 0 {
		res.Meta.Metrics["val_loss"] = res.Evals[n-1].Loss
		res.Meta.Metrics["val_base_loss"] = res.Evals[n-1].BaseLoss
	}
	keptLoss := lastLoss
	if tc.KeepBest && best != nil && bestStep != last {
		copy(co.Params, best)
		res.Meta.Step = bestStep
		res.Meta.Metrics["val_loss"] = bestLoss
		keptLoss = bestLoss
	}
	if len(tc.AlphaGrid) > 0 && len(val) > 0 && res.Stopped == 0 {
		t0 := time.Now()
		defer func() { res.Timing.Alpha = time.Since(t0) }()
		// Two points of the grid are known: α = 0 is the base alone, and
		// the training α is the kept pass's loss (unless resumed past it).
		known := map[float32]float64{}
		if b, err := t.baseLoss(val); err == nil {
			known[0] = b
		}
		if !math.IsNaN(keptLoss) && len(res.Evals) > 0 && res.Evals[len(res.Evals)-1].Step == last {
			known[co.Config.Alpha] = keptLoss
		}
		a, l, err := t.chooseAlpha(val, tc.AlphaGrid, known)
		if err != nil {
			return nil, fmt.Errorf("coordinator.Train: choosing alpha: %w", err)
		}
		co.Config.Alpha = a
		res.Meta.Metrics["val_loss"] = l
	}
	res.Best = res.Meta.Step
	return res, nil
}

// chooseAlpha measures the validation loss at each α of grid (known holds
// losses already measured, by α) and returns the lowest (the first of
// equals).
func (t *trainer) chooseAlpha(val []seqData, grid []float32, known map[float32]float64) (float32, float64, error) {
	bestA, bestL := t.co.Config.Alpha, math.Inf(1)
	for _, a := range grid {
		if math.IsNaN(float64(a)) || math.IsInf(float64(a), 0) {
			return 0, 0, fmt.Errorf("alpha %v is not finite", a)
		}
		l, ok := known[a]
		if !ok {
			sum, n, err := t.valLoss(val, a)
			if err != nil {
				return 0, 0, err
			}
			l = sum / float64(n)
		}
		if l < bestL {
			bestA, bestL = a, l
		}
	}
	return bestA, bestL, nil
}

// Evaluate measures co (with its own α) and the base alone on ds.Val's
// cached embeddings, as training's validation passes do: a held-out test
// split scored without the network. co is a single stage (no parent chain). The chunks must be in the cache
// (CollectLocal or a finished collection).
func (c *Coordinator) Evaluate(ds *dataset.Set, co *carryon.Model) (EvalInfo, error) {
	val, err := c.loadSplit(ds.Val)
	if err != nil {
		return EvalInfo{}, fmt.Errorf("coordinator.Evaluate: %w", err)
	}
	if len(val) == 0 {
		return EvalInfo{}, errors.New("coordinator.Evaluate: no validation sequence with trained tokens")
	}
	maxSeq := 0
	for _, s := range val {
		maxSeq = max(maxSeq, len(s.targets))
	}
	if maxSeq > co.Config.MaxSeq {
		return EvalInfo{}, fmt.Errorf("coordinator.Evaluate: a sequence of %d tokens is longer than the carry-on's %d", maxSeq, co.Config.MaxSeq)
	}
	t := &trainer{c: c, co: co, ws: co.NewBatchWorkspace(maxSeq, evalRows(co.Config, val)), wPred: c.base.LMHead(), dec: &decoder{c: c},
		baseKey: c.baseLossKey(ds.Val, "")}
	t.ws.HeadBF16 = c.cfg.Train.headBF16()
	ev, err := t.eval(val)
	if err != nil {
		return EvalInfo{}, fmt.Errorf("coordinator.Evaluate: %w", err)
	}
	return ev, nil
}

// epochOrder is the order in which epoch visits n training sequences: a
// Fisher-Yates shuffle driven by a PCG seeded with (seed, epoch), so the
// position in training is two integers, (epoch, index), and a resumed run
// draws the same batches as an uninterrupted one.
func epochOrder(seed uint64, epoch, n int) []int {
	rng := rand.NewPCG(seed, 0x636172<<32|uint64(epoch))
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	for i := n - 1; i > 0; i-- {
		j := int(rng.Uint64() % uint64(i+1))
		p[i], p[j] = p[j], p[i]
	}
	return p
}

type trainer struct {
	c  *Coordinator
	co *carryon.Model
	ws *carryon.Workspace // a batch workspace of at least trainRows and evalRows(validation) positions
	// trainRows are the positions of one training pass (batchRows).
	trainRows int
	grads     []float32              // CPU steps
	dev       *carryon.DeviceTrainer // device steps (TrainConfig.Device), or nil
	wPred     []float32
	dec       *decoder
	pass      []carryon.Seq // the sequences of the current pass
	srcBuf    [][][]float32 // per batch slot: its decoded sources
	// base is the base-alone loss of the validation set of is of (its
	// first sequence and length), measured once (baseLoss).
	base struct {
		of   *seqData
		n    int
		loss float64
	}
	// baseKey names the validation set's base-alone loss in the cache's
	// memo (baseLossKey); "" measures it here.
	baseKey string
}

// baseLossKey names the base-alone loss of the cached split chunks under a
// parent chain: it depends on the base, the bridge codec, the parent, the
// head's precision (TrainConfig.HeadBF16) and the chunks, never on the
// carry-on (α = 0 adds nothing).
func (c *Coordinator) baseLossKey(chunks []*dataset.Chunk, parent string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s|%s|%s|%v", c.base.EmbedHash(), c.codec, parent, c.cfg.Train.headBF16())
	for _, ch := range chunks {
		h.Write([]byte{0})
		h.Write([]byte(ch.ID))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// batchActFloats bounds the activations of a training pass (1 GiB): a
// batch that needs more runs in several passes (gradient accumulation).
const batchActFloats = 1 << 28

// batchRows is how many positions one training pass takes: the whole batch
// of batchSeqs sequences of up to maxSeq positions if its activations fit
// in batchActFloats, else fewer (at least one sequence).
func batchRows(cfg carryon.Config, maxSeq, batchSeqs int) int {
	return max(maxSeq, min(batchSeqs*maxSeq, batchActFloats/max(1, cfg.RowFloats())))
}

// evalPassRows is the most positions of one validation pass (evalRows).
const evalPassRows = 2048

// evalRows is how many positions one validation pass over val takes: up
// to evalPassRows (fewer if their activations would pass batchActFloats),
// and at least the longest sequence. It depends only on the carry-on's
// shape and val, so every validation of val groups its sequences alike.
func evalRows(cfg carryon.Config, val []seqData) int {
	longest := 1
	for _, s := range val {
		longest = max(longest, len(s.targets))
	}
	return max(longest, min(evalPassRows, batchActFloats/max(1, cfg.RowFloats())))
}

// step accumulates the gradient of the batch's mean token loss and takes
// one optimiser step. The sequences run as batched passes
// (LossAndGradBatch) of up to t.trainRows positions.
func (t *trainer) step(batch []seqData, opt *carryon.Optimizer) (StepInfo, error) {
	start := time.Now()
	total := 0
	for _, s := range batch {
		total += s.count
	}
	clear(t.grads)
	var lossSum float64
	var devErr error
	pass, rows := t.pass[:0], 0
	flush := func() {
		switch {
		case len(pass) == 0:
		case t.dev != nil:
			l, _, err := t.dev.Accumulate(pass, 1/float32(total))
			lossSum += l
			devErr = cmp.Or(devErr, err)
		default:
			l, _ := t.co.LossAndGradBatch(t.ws, pass, t.wPred, 1/float32(total), t.grads)
			lossSum += l
		}
		pass, rows = pass[:0], 0
	}
	for i, s := range batch {
		T := len(s.targets)
		if rows+T > t.trainRows {
			flush()
		}
		own, err := t.sourcesIn(i, s)
		if err != nil {
			return StepInfo{}, err
		}
		pass = append(pass, carryon.Seq{Sources: own, Targets: s.targets, T: T})
		rows += T
	}
	flush()
	t.pass = pass
	lr := opt.LR()
	var norm float64
	if t.dev != nil {
		if devErr != nil {
			return StepInfo{}, devErr
		}
		var err error
		if norm, err = t.dev.Update(); err != nil {
			return StepInfo{}, err
		}
		if err := t.dev.Download(); err != nil {
			return StepInfo{}, err
		}
	} else {
		norm = opt.Step(t.grads)
	}
	loss := lossSum / float64(total)
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return StepInfo{}, fmt.Errorf("loss is %v", loss)
	}
	return StepInfo{Loss: loss, LR: lr, GradNorm: norm, TokensPerSec: float64(total) / time.Since(start).Seconds()}, nil
}

// eval measures the mean trained-token loss on val with the carry-on and
// with the base alone (α = 0 gives exactly the base's logits).
func (t *trainer) eval(val []seqData) (EvalInfo, error) {
	sum, n, err := t.valLoss(val, t.co.Config.Alpha)
	if err != nil {
		return EvalInfo{}, err
	}
	base, err := t.baseLoss(val)
	if err != nil {
		return EvalInfo{}, err
	}
	return EvalInfo{Loss: sum / float64(n), BaseLoss: base, Tokens: n}, nil
}

// baseLoss is the mean loss of the base alone (α = 0) on val. It does not
// change during training (the sources are fixed), so it is measured once
// per validation set and remembered, and once per cache and process when
// the trainer has a baseKey.
func (t *trainer) baseLoss(val []seqData) (float64, error) {
	if len(val) > 0 && t.base.of == &val[0] && t.base.n == len(val) {
		return t.base.loss, nil
	}
	if v, ok := t.c.state.baseLosses.Load(t.baseKey); ok && t.baseKey != "" {
		t.base.of, t.base.n, t.base.loss = &val[0], len(val), v.(float64)
		return t.base.loss, nil
	}
	sum, n, err := t.valLoss(val, 0)
	if err != nil {
		return 0, err
	}
	t.base.of, t.base.n, t.base.loss = &val[0], len(val), sum/float64(n)
	if t.baseKey != "" {
		t.c.state.baseLosses.Store(t.baseKey, t.base.loss)
	}
	return t.base.loss, nil
}

// sourcesIn decodes s's sources into batch slot i's own buffers (the
// decoder reuses its buffers, and a pass holds several sequences).
func (t *trainer) sourcesIn(i int, s seqData) ([][]float32, error) {
	src, err := t.dec.sources(s)
	if err != nil {
		return nil, err
	}
	if len(t.srcBuf) <= i {
		t.srcBuf = append(t.srcBuf, make([][]float32, len(src)))
	}
	own := t.srcBuf[i]
	for j := range src {
		own[j] = append(own[j][:0], src[j]...)
	}
	return own, nil
}

// valLoss is the loss sum over val's trained tokens, and their number, at
// scale alpha. The sequences run as batched passes of up to
// evalRows(val) positions, so that Train's validation passes and Evaluate
// group them alike and agree to the bit.
func (t *trainer) valLoss(val []seqData, alpha float32) (float64, int, error) {
	var sum float64
	n := 0
	pass, rows := t.pass[:0], 0
	flush := func() {
		if len(pass) > 0 {
			l, k := t.co.LossBatch(t.ws, pass, t.wPred, alpha)
			sum, n = sum+l, n+k
		}
		pass, rows = pass[:0], 0
	}
	slot, limit := 0, evalRows(t.co.Config, val)
	for _, s := range val {
		T := len(s.targets)
		if rows+T > limit {
			flush()
			slot = 0
		}
		own, err := t.sourcesIn(slot, s)
		if err != nil {
			return 0, 0, err
		}
		slot++
		pass = append(pass, carryon.Seq{Sources: own, Targets: s.targets, T: T})
		rows += T
	}
	flush()
	t.pass = pass
	if n == 0 {
		return 0, 0, errors.New("no validation token to score")
	}
	return sum, n, nil
}
