package coordinator

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/internal/capread"
	"carryon/model"
	"carryon/tensor"
)

// A job file configures a whole coordinator job in JSON (`carryon
// coordinator --config FILE`). Every field but base and data may be left
// out (or 0) for its default; unknown fields are errors, so a typo never
// passes silently. dataset.Example:
//
//	{
//	  "base": "default",
//	  "data": "problems.jsonl",
//	  "dataset":  {"seq_len": 128, "seqs_per_chunk": 16, "val_percent": 10},
//	  "bridge":   {"codec": "q8", "layers": [-1]},
//	  "carry_on": {"width": 64, "layers": 2, "alpha": 1},
//	  "train":    {"steps": 300, "batch": 8, "lr": 0.003, "warmup": 15, "eval_every": 50},
//	  "verify":   {"rate": 0.1},
//	  "swarm":    {"min_nodes": 2, "lease_timeout": "2m"}
//	}

// maxJobFileBytes caps a job file.
const maxJobFileBytes = 1 << 20

// JobFile is a coordinator job's configuration file.
type JobFile struct {
	Base    string     `json:"base"`             // base model directory, or "default"
	Data    string     `json:"data"`             // data file, or "default"
	Cache   string     `json:"cache,omitempty"`  // embedding cache and adaptor store
	JobID   string     `json:"job_id,omitempty"` // lowercase hex; default: derived
	Dataset JobDataset `json:"dataset"`
	Bridge  JobBridge  `json:"bridge"`
	CarryOn JobCarryOn `json:"carry_on"`
	Train   JobTrain   `json:"train"`
	Verify  JobVerify  `json:"verify"`
	Swarm   JobSwarm   `json:"swarm"`
}

// JobDataset is how the data are cut (dataset.Config).
type JobDataset struct {
	SeqLen       int `json:"seq_len,omitempty"`        // tokens per sequence at most; default 128
	SeqsPerChunk int `json:"seqs_per_chunk,omitempty"` // sequences per leased chunk; default 16
	ValPercent   int `json:"val_percent,omitempty"`    // held out for validation; default 10
	MaxExamples  int `json:"max_examples,omitempty"`   // stop after so many; 0: all
}

// JobBridge is what nodes send back.
type JobBridge struct {
	Codec  string `json:"codec,omitempty"`  // bits/codec (tensor.ParseCodec); default "q8"
	Layers []int  `json:"layers,omitempty"` // [-1, shortcut layers...]; default [-1]
}

// JobCarryOn is the carry-on's shape.
type JobCarryOn struct {
	Width  int     `json:"width,omitempty"`  // h; default 64
	Layers int     `json:"layers,omitempty"` // L; default 2
	Heads  int     `json:"heads,omitempty"`  // default max(1, width/16)
	FFN    int     `json:"ffn,omitempty"`    // default ≈ 8/3·width, a multiple of 4
	Alpha  float64 `json:"alpha,omitempty"`  // α, the customisation's scale; default 1
}

// JobTrain is the optimiser and schedule.
type JobTrain struct {
	Steps           int     `json:"steps,omitempty"`      // default 200
	Batch           int     `json:"batch,omitempty"`      // sequences per step; default 8
	EvalEvery       int     `json:"eval_every,omitempty"` // default steps/4
	Seed            uint64  `json:"seed,omitempty"`       // default 1
	LR              float64 `json:"lr,omitempty"`         // peak; default 1e-3
	MinLR           float64 `json:"min_lr,omitempty"`     // final; default lr/10
	Warmup          int     `json:"warmup,omitempty"`     // steps; default steps/20
	WeightDecay     float64 `json:"weight_decay,omitempty"`
	ClipNorm        float64 `json:"clip_norm,omitempty"`
	CheckpointEvery *int    `json:"checkpoint_every,omitempty"` // default 50; 0: never
}

// JobVerify is how volunteers' work is checked.
type JobVerify struct {
	Rate      *float64 `json:"rate,omitempty"`       // base sampling rate in [0, 1]; default 0.1; 0: never
	KernelRel float64  `json:"kernel_rel,omitempty"` // honest nodes' relative difference; default 1e-3
	Self      bool     `json:"self,omitempty"`       // the coordinator computes second opinions itself
}

// JobSwarm is how chunks are leased.
type JobSwarm struct {
	MinNodes        int      `json:"min_nodes,omitempty"`
	LeasesPerNode   int      `json:"leases_per_node,omitempty"`
	LeaseTimeout    Duration `json:"lease_timeout,omitempty"`
	MinLeaseTimeout Duration `json:"min_lease_timeout,omitempty"`
	NodeTTL         Duration `json:"node_ttl,omitempty"`
	MaxAttempts     int      `json:"max_attempts,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("90s").
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"90s\" or \"2m\", not %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// FieldError is a job file value out of bounds.
type FieldError struct {
	Field string // JSON path, e.g. "train.steps"
	Msg   string // e.g. "-3 is below 1"
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// LoadJobFile reads and validates the job file at path.
func LoadJobFile(path string) (*JobFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("coordinator.LoadJobFile: %w", err)
	}
	defer f.Close()
	j, err := ParseJobFile(f)
	if err != nil {
		return nil, fmt.Errorf("job file %s: %w", path, err)
	}
	return j, nil
}

// ParseJobFile decodes (at most 1 MiB of) a job file and validates it.
func ParseJobFile(r io.Reader) (*JobFile, error) {
	b, err := capread.ReadAll(r, maxJobFileBytes)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var j JobFile
	if err := dec.Decode(&j); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, &FieldError{Field: te.Field, Msg: fmt.Sprintf("%s where %s is expected", te.Value, te.Type)}
		}
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the job's JSON object")
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	return &j, nil
}

// Validate reports the first field out of bounds, by its JSON path.
func (j *JobFile) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	atLeast := func(field string, v, lo int) error {
		if v != 0 && v < lo {
			return bad(field, "%d is below %d", v, lo)
		}
		return nil
	}
	atMost := func(field string, v, hi int) error {
		if v > hi {
			return bad(field, "%d is above %d", v, hi)
		}
		return nil
	}
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	if j.Base == "" {
		return bad("base", "required (a model directory, or \"default\")")
	}
	if j.Data == "" {
		return bad("data", "required (a data file, or \"default\")")
	}
	if j.JobID != "" && !isHex(j.JobID) {
		return bad("job_id", "%q is not 1..64 lowercase hex digits", j.JobID)
	}
	d, c, t, s := j.Dataset, j.CarryOn, j.Train, j.Swarm
	for _, err := range []error{
		atLeast("dataset.seq_len", d.SeqLen, 2), atMost("dataset.seq_len", d.SeqLen, 8192),
		atLeast("dataset.seqs_per_chunk", d.SeqsPerChunk, 1), atMost("dataset.seqs_per_chunk", d.SeqsPerChunk, 1024),
		atLeast("dataset.val_percent", d.ValPercent, 0), atMost("dataset.val_percent", d.ValPercent, 90),
		atLeast("dataset.max_examples", d.MaxExamples, 0),
		atLeast("carry_on.width", c.Width, 2), atMost("carry_on.width", c.Width, 8192),
		atLeast("carry_on.layers", c.Layers, 1), atMost("carry_on.layers", c.Layers, 64),
		atLeast("carry_on.heads", c.Heads, 1), atLeast("carry_on.ffn", c.FFN, 1),
		atLeast("train.steps", t.Steps, 1), atLeast("train.batch", t.Batch, 1), atLeast("train.eval_every", t.EvalEvery, 1),
		atLeast("train.warmup", t.Warmup, 0),
		atLeast("swarm.min_nodes", s.MinNodes, 1), atLeast("swarm.leases_per_node", s.LeasesPerNode, 1),
		atMost("swarm.leases_per_node", s.LeasesPerNode, 64), atLeast("swarm.max_attempts", s.MaxAttempts, 1),
	} {
		if err != nil {
			return err
		}
	}
	if j.Bridge.Codec != "" {
		if _, err := tensor.ParseCodec(j.Bridge.Codec); err != nil {
			return bad("bridge.codec", "%v", err)
		}
	}
	if ls := j.Bridge.Layers; len(ls) > 0 {
		switch {
		case len(ls) > 8:
			return bad("bridge.layers", "%d layers, at most 8", len(ls))
		case ls[0] != model.FinalLayer:
			return bad("bridge.layers", "the first layer must be the final one (%d), got %d", model.FinalLayer, ls[0])
		}
		for i, l := range ls[1:] {
			if l < 0 {
				return bad(fmt.Sprintf("bridge.layers[%d]", i+1), "shortcut layer %d is negative", l)
			}
		}
	}
	if shape := j.carryOn(); j.CarryOn != (JobCarryOn{}) {
		if shape.Width%shape.Heads != 0 || (shape.Width/shape.Heads)%2 != 0 {
			return bad("carry_on.heads", "%d heads do not split width %d into heads of even width", shape.Heads, shape.Width)
		}
	}
	if c.Alpha != 0 && !(finite(c.Alpha) && c.Alpha > 0 && c.Alpha <= 100) {
		return bad("carry_on.alpha", "%v not in (0, 100]", c.Alpha)
	}
	steps := t.Steps
	if steps == 0 {
		steps = 200
	}
	switch {
	case t.LR != 0 && !(finite(t.LR) && t.LR > 0 && t.LR < 1):
		return bad("train.lr", "%v not in (0, 1)", t.LR)
	case t.MinLR != 0 && !(finite(t.MinLR) && t.MinLR > 0):
		return bad("train.min_lr", "%v is below 0", t.MinLR)
	case t.MinLR != 0 && t.LR != 0 && t.MinLR > t.LR:
		return bad("train.min_lr", "%v is above train.lr %v", t.MinLR, t.LR)
	case t.Warmup > steps:
		return bad("train.warmup", "%d is above train.steps %d", t.Warmup, steps)
	case t.WeightDecay != 0 && !(finite(t.WeightDecay) && t.WeightDecay > 0 && t.WeightDecay < 1):
		return bad("train.weight_decay", "%v not in [0, 1)", t.WeightDecay)
	case t.ClipNorm != 0 && !(finite(t.ClipNorm) && t.ClipNorm > 0):
		return bad("train.clip_norm", "%v is below 0", t.ClipNorm)
	case t.CheckpointEvery != nil && *t.CheckpointEvery < 0:
		return bad("train.checkpoint_every", "%d is below 0 (0 disables checkpoints)", *t.CheckpointEvery)
	}
	v := j.Verify
	switch {
	case v.Rate != nil && !(*v.Rate >= 0 && *v.Rate <= 1):
		return bad("verify.rate", "%v not in [0, 1]", *v.Rate)
	case v.KernelRel != 0 && !(v.KernelRel > 0 && v.KernelRel < 0.1):
		return bad("verify.kernel_rel", "%v not in (0, 0.1)", v.KernelRel)
	case s.LeaseTimeout != 0 && time.Duration(s.LeaseTimeout) < time.Second:
		return bad("swarm.lease_timeout", "%v is below 1s", time.Duration(s.LeaseTimeout))
	case s.MinLeaseTimeout != 0 && time.Duration(s.MinLeaseTimeout) < 10*time.Millisecond:
		return bad("swarm.min_lease_timeout", "%v is below 10ms", time.Duration(s.MinLeaseTimeout))
	case s.MinLeaseTimeout != 0 && s.LeaseTimeout != 0 && s.MinLeaseTimeout > s.LeaseTimeout:
		return bad("swarm.min_lease_timeout", "%v is above swarm.lease_timeout %v", time.Duration(s.MinLeaseTimeout), time.Duration(s.LeaseTimeout))
	case s.NodeTTL != 0 && time.Duration(s.NodeTTL) < 100*time.Millisecond:
		return bad("swarm.node_ttl", "%v is below 100ms", time.Duration(s.NodeTTL))
	}
	// Whatever this file does not check, the coordinator's own rules do.
	cfg := j.Config()
	cfg.CacheDir = "x" // set by the command when the file leaves it out
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("job file: %w", err)
	}
	if err := j.DataConfig().Validate(); err != nil {
		return fmt.Errorf("job file: %w", err)
	}
	return nil
}

// carryOn is the carry-on shape with the defaults filled in (Sources,
// Vocab and MaxSeq come from the base when the coordinator trains).
func (j *JobFile) carryOn() carryon.Config {
	c := carryon.DefaultConfig(0, 0)
	c.Sources = nil
	s := j.CarryOn
	if s.Width != 0 {
		c = c.WithWidth(s.Width)
	}
	c.Layers = cmp.Or(s.Layers, c.Layers)
	c.Heads = cmp.Or(s.Heads, c.Heads)
	c.FFN = cmp.Or(s.FFN, c.FFN)
	c.Alpha = cmp.Or(float32(s.Alpha), c.Alpha)
	return c
}

// Config is the coordinator configuration the file describes (Logger
// unset; CacheDir as given, possibly empty).
func (j *JobFile) Config() Config {
	t := j.Train
	cfg := Config{JobID: j.JobID, Layers: j.Bridge.Layers, Codec: j.Bridge.Codec, CacheDir: j.Cache,
		MinNodes: j.Swarm.MinNodes, LeasesPerNode: j.Swarm.LeasesPerNode, LeaseTimeout: time.Duration(j.Swarm.LeaseTimeout),
		MinLeaseTimeout: time.Duration(j.Swarm.MinLeaseTimeout), NodeTTL: time.Duration(j.Swarm.NodeTTL),
		MaxAttempts: j.Swarm.MaxAttempts, VerifyKernelRel: j.Verify.KernelRel, SelfVerify: j.Verify.Self,
		Train: TrainConfig{Steps: t.Steps, BatchSeqs: t.Batch, EvalEvery: t.EvalEvery, Seed: t.Seed,
			Optim: carryon.OptimConfig{LR: float32(t.LR), MinLR: float32(t.MinLR), Warmup: t.Warmup,
				WeightDecay: float32(t.WeightDecay), ClipNorm: t.ClipNorm}}}
	if j.CarryOn != (JobCarryOn{}) {
		cfg.Train.CarryOn = j.carryOn()
	}
	if r := j.Verify.Rate; r != nil {
		cfg.VerifyFraction = *r
		if *r == 0 {
			cfg.VerifyFraction = -1 // never
		}
	}
	if e := t.CheckpointEvery; e != nil {
		cfg.Train.CheckpointEvery = *e
		if *e == 0 {
			cfg.Train.CheckpointEvery = -1 // never
		}
	}
	return cfg
}

// DataConfig is how the file cuts the data set.
func (j *JobFile) DataConfig() dataset.Config {
	d := j.Dataset
	return dataset.Config{SeqLen: d.SeqLen, SeqsPerChunk: d.SeqsPerChunk, ValPercent: d.ValPercent, MaxExamples: d.MaxExamples}
}
