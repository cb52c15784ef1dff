package coordinator

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/tensor"

	bolt "go.etcd.io/bbolt"
)

// Checkpoint file: a safetensors file (tensor.WriteSafetensors) holding,
// for every carry-on tensor NAME (as in carryon.Model.Tensors), three F32
// tensors of its shape:
//
//	param/NAME   the parameters
//	adam.m/NAME  AdamW's first moment
//	adam.v/NAME  AdamW's second moment
//
// and these __metadata__ keys:
//
//	format   "carryon-checkpoint"
//	version  "1"
//	run      the run key (hex sha256 of everything that determines the
//	         training trajectory, see Coordinator.runKey)
//	config   the CarryOnConfig as JSON (must equal the run's)
//	step     optimiser steps taken, decimal
//	epoch    the pass over the training sequences the next batch is drawn from
//	next     index of the next sequence in that epoch's order
//	loss     the last step's training loss (Go 'g' format, exact)
//	evals    JSON array of the validation passes so far
//
// and, when the run keeps its best validation pass (TrainConfig.KeepBest)
// and has had one, the parameters of that pass as F32 tensors best/NAME
// with the keys
//
//	best_step  the step of that pass, decimal
//	best_loss  its validation loss (Go 'g' format, exact)
//
// so that a resumed run keeps the best over the whole run, not over the
// part after the resume. (These are optional: a file without them, as
// carryon wrote before them, has no record, and the resumed run keeps the
// best of its own passes.)
//
// v1: first version; best_step, best_loss and best/NAME added, optional.
const (
	CheckpointFormat  = "carryon-checkpoint"
	CheckpointVersion = "1"
)

// maxCheckpointEvals caps the validation history a checkpoint may hold.
const maxCheckpointEvals = 1 << 16

// keepCheckpoints is how many checkpoints of a run stay on disk: the newest
// and one older, in case the newest cannot be read.
const keepCheckpoints = 2

// Checkpoint is the training state, besides the carry-on and its
// optimiser, needed to resume a run exactly.
type Checkpoint struct {
	RunKey string     // hex sha256 naming the run's configuration
	Step   int        // optimiser steps taken
	Epoch  int        // pass over the training sequences the next batch draws from
	Next   int        // index of the next sequence in that epoch's order
	Loss   float64    // training loss of the last step
	Evals  []EvalInfo // validation passes so far

	// KeepBest's record: the parameters of the validation pass with the
	// lowest loss so far (nil: none), its step and loss.
	Best     []float32
	BestStep int
	BestLoss float64
}

// MarshalCheckpoint encodes ck with co's parameters and opt's moments.
// Equal inputs give equal bytes.
func MarshalCheckpoint(ck Checkpoint, co *carryon.Model, opt *carryon.Optimizer) ([]byte, error) {
	fail := func(format string, args ...any) ([]byte, error) {
		return nil, fmt.Errorf("coordinator.MarshalCheckpoint: "+format, args...)
	}
	if len(opt.M) != len(co.Params) || len(opt.V) != len(co.Params) {
		return fail("optimiser moments hold %d and %d values, the carry-on %d", len(opt.M), len(opt.V), len(co.Params))
	}
	if ck.Step < 0 || ck.Epoch < 0 || ck.Next < 0 {
		return fail("negative position: step %d, epoch %d, next %d", ck.Step, ck.Epoch, ck.Next)
	}
	if len(ck.Evals) > maxCheckpointEvals {
		return fail("%d evals, over the cap of %d", len(ck.Evals), maxCheckpointEvals)
	}
	if ck.Best != nil && (len(ck.Best) != len(co.Params) || ck.BestStep < 0 || ck.BestStep > ck.Step ||
		math.IsNaN(ck.BestLoss) || math.IsInf(ck.BestLoss, 0)) {
		return fail("best pass: %d values for %d parameters, step %d of %d, loss %v", len(ck.Best), len(co.Params), ck.BestStep, ck.Step, ck.BestLoss)
	}
	cfg, err := json.Marshal(co.Config)
	if err != nil {
		return fail("config: %v", err)
	}
	evals := ck.Evals
	if evals == nil {
		evals = []EvalInfo{}
	}
	ev, err := json.Marshal(evals)
	if err != nil { // a NaN or an infinity
		return fail("evals: %v", err)
	}
	md := map[string]string{
		"format":  CheckpointFormat,
		"version": CheckpointVersion,
		"run":     ck.RunKey,
		"config":  string(cfg),
		"step":    strconv.Itoa(ck.Step),
		"epoch":   strconv.Itoa(ck.Epoch),
		"next":    strconv.Itoa(ck.Next),
		"loss":    strconv.FormatFloat(ck.Loss, 'g', -1, 64),
		"evals":   string(ev),
	}
	if ck.Best != nil {
		md["best_step"] = strconv.Itoa(ck.BestStep)
		md["best_loss"] = strconv.FormatFloat(ck.BestLoss, 'g', -1, 64)
	}
	var views []tensor.View
	for _, t := range co.Tensors() {
		a, b := t.Offset, t.Offset+t.Numel()
		views = append(views,
			tensor.F32View("param/"+t.Name, co.Params[a:b], t.Shape...),
			tensor.F32View("adam.m/"+t.Name, opt.M[a:b], t.Shape...),
			tensor.F32View("adam.v/"+t.Name, opt.V[a:b], t.Shape...))
		if ck.Best != nil {
			views = append(views, tensor.F32View("best/"+t.Name, ck.Best[a:b], t.Shape...))
		}
	}
	data, err := tensor.MarshalSafetensors(views, md)
	if err != nil {
		return fail("%w", err)
	}
	return data, nil
}

// LoadCheckpoint decodes a checkpoint into co's parameters and opt's
// moments and step count, and returns its state. It rejects another
// format or version, a config other than co's, and a missing, extra,
// misshapen or non-finite tensor (naming it). co and opt are changed only
// when the whole file is valid. Nothing is allocated from sizes read in
// data: co fixes every size.
func LoadCheckpoint(data []byte, co *carryon.Model, opt *carryon.Optimizer) (Checkpoint, error) {
	var ck Checkpoint
	fail := func(format string, args ...any) (Checkpoint, error) {
		return Checkpoint{}, fmt.Errorf("coordinator.LoadCheckpoint: "+format, args...)
	}
	if len(opt.M) != len(co.Params) || len(opt.V) != len(co.Params) {
		return fail("optimiser moments hold %d and %d values, the carry-on %d", len(opt.M), len(opt.V), len(co.Params))
	}
	st, err := tensor.ParseSafetensorsOf(data, CheckpointFormat, CheckpointVersion)
	if err != nil {
		return fail("%w", err)
	}
	md := st.Meta
	want, err := json.Marshal(co.Config)
	if err != nil {
		return fail("config: %v", err)
	}
	if md["config"] != string(want) {
		return fail("the checkpoint's carry-on config %.200s differs from the run's %s", md["config"], want)
	}
	ck.RunKey = md["run"]
	for _, f := range []struct {
		name string
		v    *int
	}{{"step", &ck.Step}, {"epoch", &ck.Epoch}, {"next", &ck.Next}} {
		n, err := strconv.Atoi(md[f.name])
		if err != nil || n < 0 {
			return fail("%s %q is not a count", f.name, md[f.name])
		}
		*f.v = n
	}
	if ck.Loss, err = strconv.ParseFloat(md["loss"], 64); err != nil {
		return fail("loss %q: %v", md["loss"], err)
	}
	ev := md["evals"]
	if n := strings.Count(ev, "{"); n > maxCheckpointEvals {
		return fail("%d evals, over the cap of %d", n, maxCheckpointEvals)
	}
	if err := json.Unmarshal([]byte(ev), &ck.Evals); err != nil {
		return fail("evals: %v", err)
	}
	if len(ck.Evals) == 0 {
		ck.Evals = nil
	}
	_, hasBest := md["best_step"]
	if hasBest {
		n, err := strconv.Atoi(md["best_step"])
		if err != nil || n < 0 || n > ck.Step {
			return fail("best_step %q is not a step of the run's %d", md["best_step"], ck.Step)
		}
		ck.BestStep = n
		if ck.BestLoss, err = strconv.ParseFloat(md["best_loss"], 64); err != nil || math.IsNaN(ck.BestLoss) || math.IsInf(ck.BestLoss, 0) {
			return fail("best_loss %q is not a finite number", md["best_loss"])
		}
		ck.Best = make([]float32, len(co.Params)) // sized by co, not by data
	}
	type window struct {
		dst []float32
		src []float32
	}
	var copies []window
	expect := map[string]bool{}
	for _, t := range co.Tensors() {
		a, b := t.Offset, t.Offset+t.Numel()
		parts := []struct {
			prefix string
			dst    []float32
		}{{"param/", co.Params[a:b]}, {"adam.m/", opt.M[a:b]}, {"adam.v/", opt.V[a:b]}}
		if hasBest {
			parts = append(parts, struct {
				prefix string
				dst    []float32
			}{"best/", ck.Best[a:b]})
		}
		for _, p := range parts {
			name := p.prefix + t.Name
			expect[name] = true
			v, ok := st.Get(name)
			if !ok {
				return fail("tensor %q is missing", name)
			}
			if v.DType != tensor.F32 || !slices.Equal(v.Shape, t.Shape) {
				return fail("tensor %q is %s %v, want F32 %v", name, v.DType, v.Shape, t.Shape)
			}
			f, err := v.Float32()
			if err != nil {
				return fail("%w", err)
			}
			for i, x := range f {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					return fail("tensor %q[%d] = %v", name, i, x)
				}
			}
			copies = append(copies, window{p.dst, f})
		}
	}
	for _, name := range st.Names() {
		if !expect[name] {
			return fail("unexpected tensor %q", name)
		}
	}
	for _, w := range copies {
		copy(w.dst, w.src)
	}
	opt.Steps = ck.Step
	return ck, nil
}

// checkpoints keeps the checkpoints of one training run: payload files in
// a directory, indexed in the state store (a file without its index entry
// is not a checkpoint).
type checkpoints struct {
	dir   string
	key   string // the run key; files are named by its first 16 digits
	state *stateStore
}

func (s checkpoints) path(step int) string {
	return filepath.Join(s.dir, fmt.Sprintf("%s-%09d.ckpt", s.key[:16], step))
}

// steps lists the steps of this run's indexed checkpoints, newest first.
func (s checkpoints) steps() ([]int, error) {
	var out []int
	prefix := []byte(s.key[:16] + "/")
	err := s.state.view(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bCkpts).Cursor()
		for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			if step, err := strconv.Atoi(string(k[len(prefix):])); err == nil {
				out = append(out, step)
			}
		}
		return nil
	})
	sort.Sort(sort.Reverse(sort.IntSlice(out)))
	return out, err
}

// save writes a checkpoint durably, indexes it, and removes all but the
// newest keepCheckpoints of the run.
func (s checkpoints) save(ck Checkpoint, co *carryon.Model, opt *carryon.Optimizer) error {
	data, err := MarshalCheckpoint(ck, co, opt)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.path(ck.Step), data, true); err != nil {
		return fmt.Errorf("coordinator: checkpoint: %w", err)
	}
	steps, err := s.steps()
	if err != nil {
		return fmt.Errorf("coordinator: checkpoint: %w", err)
	}
	steps = append([]int{ck.Step}, steps...)
	sort.Sort(sort.Reverse(sort.IntSlice(steps)))
	steps = slices.Compact(steps)
	var old []int
	for i, st := range steps {
		if i >= keepCheckpoints && st < ck.Step {
			old = append(old, st)
		}
	}
	err = s.state.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bCkpts)
		if err := b.Put([]byte(ckptKey(s.key[:16], ck.Step)), []byte(s.path(ck.Step))); err != nil {
			return err
		}
		for _, st := range old {
			if err := b.Delete([]byte(ckptKey(s.key[:16], st))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("coordinator: checkpoint: %w", err)
	}
	for _, st := range old {
		if err := os.Remove(s.path(st)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("coordinator: checkpoint: %w", err)
		}
	}
	return nil
}

// latest loads the newest readable checkpoint of the run with at most
// maxStep steps into co and opt. It reports false when there is none; the
// files it could not use are described in skipped.
func (s checkpoints) latest(co *carryon.Model, opt *carryon.Optimizer, maxStep int) (ck Checkpoint, ok bool, skipped []error) {
	steps, err := s.steps()
	if err != nil {
		return Checkpoint{}, false, []error{err}
	}
	for _, step := range steps {
		if step > maxStep {
			skipped = append(skipped, fmt.Errorf("%s: step %d is beyond the run's %d steps", s.path(step), step, maxStep))
			continue
		}
		data, err := os.ReadFile(s.path(step))
		if err != nil {
			skipped = append(skipped, err)
			continue
		}
		ck, err := LoadCheckpoint(data, co, opt)
		switch {
		case err != nil:
			skipped = append(skipped, fmt.Errorf("%s: %w", s.path(step), err))
		case ck.RunKey != s.key:
			skipped = append(skipped, fmt.Errorf("%s: run key %.16s, want %.16s", s.path(step), ck.RunKey, s.key))
		case ck.Step != step:
			skipped = append(skipped, fmt.Errorf("%s: holds step %d", s.path(step), ck.Step))
		default:
			return ck, true, skipped
		}
	}
	return Checkpoint{}, false, skipped
}

// runKey names everything that determines a training trajectory: two runs
// with equal keys take bit-identical steps, so one may resume the other.
func (c *Coordinator) runKey(ds *dataset.Set, co carryon.Config, parent string) (string, error) {
	tc := c.cfg.Train
	var mix []string
	for _, j := range c.mixJobs() {
		mix = append(mix, fmt.Sprintf("%s|%s|%v", j.Base, j.Codec, j.Layers))
	}
	b, err := json.Marshal(struct {
		Format, Version, Base, Data, Codec, Parent string
		Layers                                     []int
		CarryOn                                    carryon.Config
		Optim                                      carryon.OptimConfig
		Batch                                      int
		Seed                                       uint64
		GateBias                                   float32  `json:",omitempty"`
		HeadBF16                                   bool     `json:",omitempty"` // the head in bf16 where it takes effect
		Mix                                        []string `json:",omitempty"` // mixed bases: hash, codec, layers
	}{CheckpointFormat, CheckpointVersion, c.base.EmbedHash(), ds.Hash, c.codec.String(), parent,
		c.cfg.Layers, co, tc.Optim, tc.BatchSeqs, tc.Seed, tc.GateBias, tc.headBF16(), mix})
	if err != nil {
		return "", fmt.Errorf("run key: %w", err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:]), nil
}

// syncDir makes a rename or a new file in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
