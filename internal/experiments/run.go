// Package experiments runs the GSM8K experiments of docs/experiments.md on
// a base model (the embedded default base in practice) and writes their
// results: experiments.json, experiments-results.md (the tables) and SVG
// plots under img/. `carryon experiment` is its command.
//
// Every carry-on is trained through the coordinator's own path
// (dataset.Read, CollectLocal, Train), the way `carryon train`
// trains one; the base's forward pass runs once per sequence for the whole
// run and every bridge setting and shape is trained from it.
package experiments

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"carryon/carryon"
	"carryon/coordinator"
	"carryon/dataset"
	"carryon/model"
	"carryon/tensor"
	"carryon/tokenizer"
)

// Names are the experiments, in the order they run; Options.Only takes one.
var Names = []string{"loss", "clock", "bridge", "shape", "search", "mix", "exact"}

// Options configure Run.
type Options struct {
	Data string // GSM8K-style JSONL with question and answer fields
	Out  string // where experiments.json, experiments-results.md and img/*.svg go
	// Only runs some experiments (comma-separated names of Names); the
	// other sections of an existing Out/experiments.json are kept. "" runs
	// all.
	Only string
	// Quick shrinks every size (QuickSizes): a smoke run of the pipeline.
	Quick bool
	// Sizes, when set, replaces FullSizes or QuickSizes.
	Sizes *Sizes
	// CacheDir holds the embedding caches; "" means a temporary directory
	// removed at the end.
	CacheDir string
	// BaseName names the base in the results.
	BaseName string
	// Progress, when set, receives one line per stage.
	Progress func(msg string)
	// Mix, when set, is a second base for the mixture experiment (its
	// final hidden states as a further source, coordinator.Config.Mix); it
	// must share the base's tokenizer. MixName names it in the results.
	Mix     *model.Base
	MixName string
}

// Sizes are every size and hyper-parameter of a run (recorded in the
// results).
type Sizes struct {
	MaxRecords     int     `json:"max_records"`     // problems read from the file (0: all)
	ValProblems    int     `json:"val_problems"`    // held-out qualifying problems (the test split: never used to choose anything)
	SelectProblems int     `json:"select_problems"` // qualifying problems of the validation split that chooses checkpoints and α
	TrainProblems  int     `json:"train_problems"`  // qualifying problems trained on (0: all the others)
	WideTrain      int     `json:"wide_train"`      // problems in the wide (any length, cut to context) training set
	Steps          int     `json:"steps"`           // optimiser steps per carry-on
	Batch          int     `json:"batch"`           // sequences per step (every method)
	LR             float32 `json:"lr"`              // carry-on peak LR (cosine to LR/10, 5% warm-up)
	ClockSeconds   float64 `json:"clock_seconds"`   // wall-clock budget per method in the clock experiment
	ClockEvals     int     `json:"clock_evals"`     // validation passes per method there
	// ClockSeed seeds every method of the clock experiment (batch order
	// and initialisation; 0: 1). A run replaces the methods of its own
	// budget and seed in the results and keeps the others.
	ClockSeed uint64 `json:"clock_seed,omitempty"`
	// ClockMethods, when set, runs only these methods of the clock
	// experiment (of ClockKeys), so that a long budget can be measured in
	// several shorter runs.
	ClockMethods   []string `json:"clock_methods,omitempty"`
	FinetuneLR     float32  `json:"finetune_lr"`      // full fine-tune of the base
	ScratchLR      float32  `json:"scratch_lr"`       // tiny base from scratch
	ExactProblems  int      `json:"exact_problems"`   // held-out problems generated greedily
	ExactMaxTokens int      `json:"exact_max_tokens"` // answer cap (0: up to the context)
	// ExactSteps, when > 0, adds to the exact-match experiment the h = 256
	// carry-on trained this many steps (validation 8 times, best kept).
	ExactSteps     int     `json:"exact_steps,omitempty"`
	LoRARank       int     `json:"lora_rank"` // LoRA baseline's rank in the clock experiment
	LoRALR         float32 `json:"lora_lr"`
	SearchSteps    int     `json:"search_steps"`             // steps per search trial
	SearchParallel int     `json:"search_parallel"`          // trials trained at once (0: GOMAXPROCS)
	SearchNoStop   bool    `json:"search_no_stop,omitempty"` // no early stop of trials behind the median
}

// alphaGrid are the α values tried on the validation split after training
// (0 is the base alone, so a blend worse than the base is never chosen).
var alphaGrid = []float32{0, 0.5, 0.75, 1, 1.25, 1.5}

func (s Sizes) validate() error {
	switch {
	case s.MaxRecords < 0 || s.TrainProblems < 0 || s.ValProblems < 1 || s.WideTrain < 1 || s.Steps < 1 || s.Batch < 1:
		return fmt.Errorf("sizes %+v: want MaxRecords, TrainProblems >= 0 and ValProblems, WideTrain, Steps, Batch >= 1", s)
	case !(s.LR > 0) || !(s.FinetuneLR > 0) || !(s.ScratchLR > 0) || !(s.ClockSeconds > 0) || s.ClockEvals < 1:
		return fmt.Errorf("sizes %+v: want positive learning rates, clock budget and evaluations", s)
	case s.ExactProblems < 0 || s.ExactMaxTokens < 0 || s.ExactSteps < 0:
		return fmt.Errorf("sizes %+v: want ExactProblems, ExactMaxTokens, ExactSteps >= 0", s)
	case !knownClockMethods(s.ClockMethods):
		return fmt.Errorf("sizes: clock_methods %v: want some of %v", s.ClockMethods, ClockKeys)
	case s.SelectProblems < 1 || s.LoRARank < 1 || !(s.LoRALR > 0) || s.SearchSteps < 1 || s.SearchParallel < 0:
		return fmt.Errorf("sizes %+v: want SelectProblems, LoRARank, SearchSteps >= 1, LoRALR > 0, SearchParallel >= 0", s)
	}
	return nil
}

// FullSizes are the sizes of the published run (about 20 minutes on two
// shared cores with the 512-token default base).
func FullSizes() Sizes {
	return Sizes{ValProblems: 60, SelectProblems: 60, TrainProblems: 1000, WideTrain: 1000, Steps: 200, Batch: 8, LR: 3e-3,
		ClockSeconds: 120, ClockEvals: 8, FinetuneLR: 3e-4, ScratchLR: 2e-3, ExactProblems: 60, ExactMaxTokens: 256,
		LoRARank: 8, LoRALR: 2e-3, SearchSteps: 100}
}

// QuickSizes exercise every code path in seconds.
func QuickSizes() Sizes {
	return Sizes{MaxRecords: 600, ValProblems: 4, SelectProblems: 3, TrainProblems: 16, WideTrain: 12, Steps: 4, Batch: 2, LR: 3e-3,
		ClockSeconds: 1, ClockEvals: 2, FinetuneLR: 3e-4, ScratchLR: 2e-3, ExactProblems: 6, ExactMaxTokens: 6, ExactSteps: 6,
		LoRARank: 2, LoRALR: 2e-3, SearchSteps: 4, SearchParallel: 2}
}

// Results is everything a run measured; experiments.json holds it.
type Results struct {
	Setup Setup `json:"setup"`
	// Sections records, per experiment (Names), the run that produced its
	// section: a run with Options.Only replaces the records of the
	// experiments it runs and keeps the others'.
	Sections map[string]SectionRun `json:"sections,omitempty"`
	Loss     *LossResult           `json:"loss,omitempty"`
	Clock    *ClockResult          `json:"clock,omitempty"`
	Bridge   *BridgeResult         `json:"bridge,omitempty"`
	Shape    *ShapeResult          `json:"shape,omitempty"`
	Exact    *ExactResult          `json:"exact,omitempty"`
	Search   *SearchResult         `json:"search,omitempty"`
	Mix      *MixResult            `json:"mix,omitempty"`
}

// SectionRun is the run that produced one section of the results.
type SectionRun struct {
	Sizes      Sizes   `json:"sizes"`
	Date       string  `json:"date"`
	Seconds    float64 `json:"seconds"`     // wall time of this experiment
	CPUSeconds float64 `json:"cpu_seconds"` // this process's CPU time over it (0: no /proc)
	// Load is the machine's 1-minute load average at the experiment's
	// start and end (0: no /proc/loadavg).
	Load       [2]float64 `json:"load"`
	GOMAXPROCS int        `json:"gomaxprocs"`
}

// Setup describes the base, the data and the run that last wrote it (a
// run with Options.Only rewrites it; each section's own sizes are in
// Results.Sections).
type Setup struct {
	Base        string  `json:"base"`
	BaseHash    string  `json:"base_hash"`
	BaseParams  int     `json:"base_params"`
	Dim         int     `json:"dim"`
	BaseLayers  int     `json:"base_layers"`
	Vocab       int     `json:"vocab"`
	Context     int     `json:"context"`
	Read        int     `json:"read"`         // problems read
	Fit         int     `json:"fit"`          // of which fit the context
	Train       int     `json:"train"`        // fitting problems trained on
	Val         int     `json:"val"`          // fitting problems held out (test)
	Select      int     `json:"select"`       // fitting problems of the validation split (chooses checkpoints and α)
	Wide        int     `json:"wide"`         // problems in the wide set (cut to the context)
	TrainTokens int     `json:"train_tokens"` // answer tokens (the loss positions) in Train
	ValTokens   int     `json:"val_tokens"`
	WideTokens  int     `json:"wide_tokens"`
	BaseLoss    float64 `json:"base_loss"` // base alone on Val's answer tokens, exact hidden states
	// BaseSelectLoss is the same on the validation split.
	BaseSelectLoss float64 `json:"base_select_loss"`
	Sizes          Sizes   `json:"sizes"` // of the run that wrote the setup (the split's sizes describe the data above)
	GOMAXPROCS     int     `json:"gomaxprocs"`
	// ForwardSeconds is the base's forward time over every sequence of
	// this run, once each; TrainSeconds the carry-on training time of all
	// the runs that reused it.
	ForwardSeconds float64 `json:"forward_seconds"`
	ForwardSeqs    int     `json:"forward_seqs"`
	CarryOnRuns    int     `json:"carry_on_runs"`
	TrainSeconds   float64 `json:"train_seconds"`
	WallSeconds    float64 `json:"wall_seconds"`
	Date           string  `json:"date"`
}

// Curve is validation loss over training: Seconds counts training time
// only (validation passes excluded).
type Curve struct {
	Step    []int     `json:"step"`
	Seconds []float64 `json:"seconds"`
	Loss    []float64 `json:"loss"`
}

func (c *Curve) add(step int, sec, loss float64) {
	c.Step, c.Seconds, c.Loss = append(c.Step, step), append(c.Seconds, sec), append(c.Loss, loss)
}

// CarryOnRun is one trained carry-on.
type CarryOnRun struct {
	Data         string  `json:"data"` // "fit" or "wide"
	Codec        string  `json:"codec"`
	Width        int     `json:"width"`
	Layers       int     `json:"layers"`
	Params       int     `json:"params"`
	AdaptorBytes int     `json:"adaptor_bytes"` // the adaptor file (float32 weights and metadata)
	Steps        int     `json:"steps"`
	Seed         uint64  `json:"seed"`              // initialisation and batch order
	Sources      []int   `json:"sources,omitempty"` // base layers read (model.FinalLayer = -1 first); nil: final only
	ValLoss      float64 `json:"val_loss"`          // held-out (test) loss of the kept carry-on
	BaseLoss     float64 `json:"base_loss"`         // base alone on the test split, through the same bridge
	TrainLoss    float64 `json:"train_loss"`
	SelectLoss   float64 `json:"select_loss"`         // validation-split loss of the kept carry-on (what chose it)
	BestLoss     float64 `json:"best_loss"`           // lowest validation-split loss seen while training (α = 1); 0: none (paused at a search's rung)
	BestStep     int     `json:"best_step"`           // the step kept (best-by-validation); 0: none
	Alpha        float32 `json:"alpha"`               // α chosen on the validation split
	GateBias     float32 `json:"gate_bias,omitempty"` // initial b_g
	Mix          string  `json:"mix,omitempty"`       // a second base whose final hidden states were a source too
	Stopped      int     `json:"stopped,omitempty"`   // the step an early stop ended the run at (0: it ran all Steps)
	StepMS       float64 `json:"step_ms"`
	Curve        Curve   `json:"curve"`
	// Phases is where the run's wall time went.
	Phases Phases `json:"phases"`
}

// Phases is a carry-on run's wall time by phase, in seconds.
type Phases struct {
	Open  float64 `json:"open"`  // opening the coordinator and checking the cache holds the training and validation splits' chunks
	Load  float64 `json:"load"`  // reading the cached embeddings of the training and validation splits
	Steps float64 `json:"steps"` // optimiser steps
	Eval  float64 `json:"eval"`  // validation passes
	Alpha float64 `json:"alpha"` // choosing α on validation
	Test  float64 `json:"test"`  // scoring the held-out split (checking and reading it in the cache included)
}

// LossResult is experiment 1.
type LossResult struct {
	BaseLoss float64      `json:"base_loss"`
	Runs     []CarryOnRun `json:"runs"`
}

// ClockMethod is one training method of experiment 2, trained for one
// budget with one seed.
type ClockMethod struct {
	Key     string  `json:"key"` // of ClockKeys
	Name    string  `json:"name"`
	Budget  float64 `json:"budget"` // wall-clock seconds allowed
	Seed    uint64  `json:"seed"`
	Params  int     `json:"params"` // trained parameters
	Steps   int     `json:"steps"`
	LR      float32 `json:"lr"`
	StepMS  float64 `json:"step_ms"`
	Seconds float64 `json:"seconds"` // on its clock at the end (a carry-on's embedding and cache reads included)
	// EmbedSeconds is the base's forward pass over the training and
	// validation problems into a fresh cache (the cold carry-on; 0 for the
	// others); ReadSeconds a carry-on's opening of the cache and reading of
	// its training and validation splits. Both are on its clock.
	EmbedSeconds float64 `json:"embed_seconds,omitempty"`
	ReadSeconds  float64 `json:"read_seconds,omitempty"`
	Loss         float64 `json:"loss"` // held-out (test) answer-token loss of the kept weights
	// BestStep is the step whose weights were kept: the best pass on the
	// validation split (0: none beat the start).
	BestStep int   `json:"best_step"`
	Curve    Curve `json:"curve"` // validation-split loss over training
	// Load is the 1-minute load average before and after the method ran;
	// Date when it ran.
	Load [2]float64 `json:"load"`
	Date string     `json:"date"`
}

// ClockResult is experiment 2: every method, budget and seed measured so
// far (a run replaces the entries of its own budget and seed).
type ClockResult struct {
	BaseLoss float64       `json:"base_loss"`
	Methods  []ClockMethod `json:"methods"`
}

// BridgeRow is one bridge setting of experiment 3.
type BridgeRow struct {
	Codec         string  `json:"codec"`
	BytesPerToken int     `json:"bytes_per_token"` // on the wire, per token of the base's width
	RelError      float64 `json:"rel_error"`       // ‖x̂−x‖/‖x‖ over the held-out hidden states
	BaseLoss      float64 `json:"base_loss"`       // base alone through the bridge
	ValLoss       float64 `json:"val_loss"`
	BestLoss      float64 `json:"best_loss"`
}

// BridgeResult is experiment 3.
type BridgeResult struct {
	F32BytesPerToken int         `json:"f32_bytes_per_token"`
	Rows             []BridgeRow `json:"rows"`
}

// ShapeResult is experiment 4.
type ShapeResult struct {
	Runs []CarryOnRun `json:"runs"`
}

// ExactRow is one system of experiment 5.
type ExactRow struct {
	System    string `json:"system"`
	Correct   int    `json:"correct"`
	Formatted int    `json:"formatted"` // answers that end in "#### <number>"
	Stopped   int    `json:"stopped"`   // answers ended by EOS (not by the context)
	// LineEnded counts answers that generation ended at the end of their
	// "#### N" line (GSM8K's last line) without an EOS: a system that
	// goes on writing a new "Question:" as its pretraining text did is
	// stopped there.
	LineEnded  int     `json:"line_ended"`
	MeanTokens float64 `json:"mean_tokens"`
	// Calcs are the well-formed <<a op b=c>> calculations written, of
	// whole numbers; CalcsRight those whose c is a op b (the arithmetic
	// right, whether or not the operands are the problem's).
	Calcs      int `json:"calcs"`
	CalcsRight int `json:"calcs_right"`
}

// Sample is one generated answer per system, for the write-up.
type Sample struct {
	Question  string   `json:"question"`
	Reference string   `json:"reference"`
	Answers   []string `json:"answers"` // in ExactResult.Rows order
}

// ExactResult is experiment 5.
type ExactResult struct {
	// Problems are generated for: the first FromTest of them are the
	// held-out test split's, the others fitting problems that no run
	// trains on (Split.Unused).
	Problems int        `json:"problems"`
	FromTest int        `json:"from_test,omitempty"`
	Rows     []ExactRow `json:"rows"`
	Samples  []Sample   `json:"samples"`
	// OneStep is the diagnostic: the base alone on OneStepProblems
	// one-step problems of its own pretraining family.
	OneStep *ExactRow `json:"one_step,omitempty"`
	// Long is the h = 256 carry-on trained Sizes.ExactSteps steps on the
	// larger training set (nil: none).
	Long            *CarryOnRun `json:"long,omitempty"`
	OneStepProblems int         `json:"one_step_problems,omitempty"`
}

// runner holds what the experiments share.
type runner struct {
	ctx      context.Context
	opt      Options
	sz       Sizes
	base     *model.Base
	tok      tokenizer.Tokenizer
	split    *Split
	fit      *dataset.Set // Train, and Select as its validation split
	wide     *dataset.Set // Wide, and Select as its validation split
	test     *dataset.Set // Val (the held-out test problems) as its validation split, no training part
	memo     *memoForwarder
	cacheDir string
	log      *slog.Logger
	done     map[string]*trained
	res      *Results
	// tuned are the base-trainer models of the clock experiment (LoRA,
	// full fine-tune), kept for the exact-match experiment.
	tuned []tunedBase
}

// tunedBase is a base trained by the clock experiment.
type tunedBase struct {
	name string
	base *model.Base
}

type trained struct {
	run CarryOnRun
	co  *carryon.Model
}

func (r *runner) logf(format string, args ...any) {
	if r.opt.Progress != nil {
		r.opt.Progress(fmt.Sprintf(format, args...))
	}
}

func timed(f func() error) (float64, error) {
	t := time.Now()
	err := f()
	return time.Since(t).Seconds(), err
}

// Run runs the experiments on base and writes their results under
// opt.Out. tok must be base's tokenizer.
func Run(ctx context.Context, base *model.Base, tok tokenizer.Tokenizer, opt Options) (*Results, error) {
	start := time.Now()
	if opt.Data == "" || opt.Out == "" {
		return nil, errors.New("experiments.Run: Data and Out are required")
	}
	only := map[string]bool{}
	if opt.Only != "" {
		for _, o := range strings.Split(opt.Only, ",") {
			ok := false
			for _, n := range Names {
				ok = ok || n == o
			}
			if !ok {
				return nil, fmt.Errorf("experiments.Run: unknown experiment %q (want one of %v)", o, Names)
			}
			only[o] = true
		}
	}
	sz := FullSizes()
	if opt.Quick {
		sz = QuickSizes()
	}
	if opt.Sizes != nil {
		sz = *opt.Sizes
	}
	if err := sz.validate(); err != nil {
		return nil, fmt.Errorf("experiments.Run: %w", err)
	}
	r := &runner{ctx: ctx, opt: opt, sz: sz, base: base, tok: tok, memo: &memoForwarder{base: base, m: map[string]map[int][]float32{}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), done: map[string]*trained{}, res: &Results{}}
	// One forward pass per sequence serves every source set the
	// experiments read: final, the embeddings and the middle layer.
	r.memo.all = []int{model.FinalLayer, 0, max(1, base.Config.Layers/2)}
	if opt.Only != "" {
		if b, err := os.ReadFile(filepath.Join(opt.Out, "experiments.json")); err == nil {
			if err := json.Unmarshal(b, r.res); err != nil {
				return nil, fmt.Errorf("experiments.Run: merging into %s: %w", filepath.Join(opt.Out, "experiments.json"), err)
			}
		}
	}
	cacheDir, removeCache, err := cacheDirOrTemp(opt.CacheDir, "carryon-experiments-*")
	if err != nil {
		return nil, fmt.Errorf("experiments.Run: %w", err)
	}
	defer removeCache()
	r.cacheDir = cacheDir
	if err := r.setup(); err != nil {
		return nil, fmt.Errorf("experiments.Run: %w", err)
	}
	steps := map[string]func() error{"loss": r.lossExp, "clock": r.clockExp, "bridge": r.bridgeExp, "shape": r.shapeExp,
		"search": r.searchExp, "mix": r.mixExp, "exact": r.exactExp}
	for _, n := range Names {
		if opt.Only != "" && !only[n] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("experiments.Run: %w", err)
		}
		r.logf("experiment %s", n)
		rec := SectionRun{Sizes: sz, Date: time.Now().UTC().Format("2006-01-02 15:04"), GOMAXPROCS: runtime.GOMAXPROCS(0)}
		rec.Load[0] = LoadAvg()
		t0, cpu0 := time.Now(), ProcessCPU()
		if err := steps[n](); err != nil {
			return nil, fmt.Errorf("experiments.Run: %s: %w", n, err)
		}
		rec.Seconds, rec.CPUSeconds, rec.Load[1] = time.Since(t0).Seconds(), (ProcessCPU() - cpu0).Seconds(), LoadAvg()
		if r.res.Sections == nil {
			r.res.Sections = map[string]SectionRun{}
		}
		r.res.Sections[n] = rec
	}
	s := &r.res.Setup
	s.ForwardSeconds, s.ForwardSeqs = r.memo.Seconds, r.memo.Seqs
	s.WallSeconds = time.Since(start).Seconds()
	if err := Write(r.res, opt.Out); err != nil {
		return nil, err
	}
	return r.res, nil
}

// setup splits the data and measures the base alone.
func (r *runner) setup() error {
	c := r.base.Config
	var err error
	train := r.sz.TrainProblems
	if train > 0 {
		train += r.sz.SelectProblems
	}
	if r.split, err = LoadSplit(r.opt.Data, r.tok, c.MaxPos, r.sz.ValProblems, train, r.sz.WideTrain, r.sz.MaxRecords); err != nil {
		return err
	}
	// The validation split is carved from the front of the training part:
	// the next SelectProblems fitting problems after the held-out ones.
	if len(r.split.Train) <= r.sz.SelectProblems {
		return fmt.Errorf("%d fitting problems after the held-out ones: too few for %d validation problems and some to train on", len(r.split.Train), r.sz.SelectProblems)
	}
	r.split.Select, r.split.Train = r.split.Train[:r.sz.SelectProblems], r.split.Train[r.sz.SelectProblems:]
	if r.fit, err = toDataset(r.tok, c.MaxPos, r.split.Train, r.split.Select); err != nil {
		return err
	}
	if r.wide, err = toDataset(r.tok, c.MaxPos, r.split.Wide, r.split.Select); err != nil {
		return err
	}
	if r.test, err = toDataset(r.tok, c.MaxPos, nil, r.split.Val); err != nil {
		return err
	}
	val := sequences(r.test.Val)
	for _, e := range append(sequences(r.fit.Train), val...) {
		if len(e.Tokens) > c.MaxPos {
			return fmt.Errorf("a fitting problem tokenized to %d tokens, over %d: the length count disagrees with the coordinator's", len(e.Tokens), c.MaxPos)
		}
	}
	baseLoss, err := answerLoss(r.base, val)
	if err != nil {
		return err
	}
	baseSel, err := answerLoss(r.base, sequences(r.fit.Val))
	if err != nil {
		return err
	}
	r.res.Setup = Setup{Base: r.opt.BaseName, BaseHash: r.base.WeightsHash, BaseParams: int(c.NumParams()), Dim: c.Dim,
		BaseLayers: c.Layers, Vocab: c.Vocab, Context: c.MaxPos, Read: r.split.Read, Fit: r.split.Fit,
		Train: len(r.split.Train), Val: len(r.split.Val), Select: len(r.split.Select), Wide: len(r.split.Wide), BaseSelectLoss: baseSel,
		TrainTokens: trainedTokens(sequences(r.fit.Train)), ValTokens: trainedTokens(val),
		WideTokens: trainedTokens(sequences(r.wide.Train)), BaseLoss: baseLoss, Sizes: r.sz,
		GOMAXPROCS: runtime.GOMAXPROCS(0), Date: time.Now().UTC().Format("2006-01-02")}
	r.logf("data: %d problems read, %d fit %d tokens; %d train, %d validation, %d held out, %d in the wide set; base loss %.4f (validation %.4f)",
		r.split.Read, r.split.Fit, c.MaxPos, len(r.split.Train), len(r.split.Select), len(r.split.Val), len(r.split.Wide), baseLoss, baseSel)
	return nil
}

// answerLoss is the mean answer-token cross-entropy of b (exact hidden
// states, no bridge) over exs.
func answerLoss(b *model.Base, exs []dataset.Example) (float64, error) {
	head := newHeadLoss(b)
	var sum float64
	n := 0
	for _, e := range exs {
		hs, err := b.Forward(e.Tokens, []int{model.FinalLayer})
		if err != nil {
			return 0, err
		}
		l, k := head.loss(hs[0], e)
		sum, n = sum+l, n+k
	}
	if n == 0 {
		return 0, errors.New("no answer tokens to score")
	}
	return sum / float64(n), nil
}

// headLoss scores final hidden states through a base's LM head, a few rows
// of logits at a time (a scratch of about 2^21 floats, reused).
type headLoss struct {
	b       *model.Base
	chunk   int
	scratch []float32
}

func newHeadLoss(b *model.Base) *headLoss {
	chunk := max(1, min(64, (1<<21)/b.Config.Vocab))
	return &headLoss{b: b, chunk: chunk, scratch: make([]float32, chunk*b.Config.Vocab)}
}

// loss is the summed cross-entropy of x's rows (len(e.Tokens), Dim) against
// e's trained targets, and how many there are.
func (h *headLoss) loss(x []float32, e dataset.Example) (float64, int) {
	c := h.b.Config
	return tensor.CrossEntropyLMHead(nil, x, h.b.LMHead(), e.Targets(), len(e.Tokens), c.Dim, c.Vocab, h.chunk, 0, h.scratch)
}

// carryOnShape is the carry-on of width h and depth L that `carryon train`
// builds (carryon.Config.WithWidth proportions).
func carryOnShape(dim, vocab, width, layers int) carryon.Config {
	c := carryon.DefaultConfig(dim, vocab).WithWidth(width)
	c.Layers = layers
	return c
}

// spec names one carry-on training run.
type spec struct {
	data          string // "fit" or "wide"
	codec         string
	width, layers int
	steps         int
	seed          uint64
	lr            float32 // 0: Sizes.LR
	sources       []int   // base layers (model.FinalLayer first); nil: final only
	// trainAlpha is α during training (0: 1); α is then chosen on the
	// validation split.
	trainAlpha float32
	gateBias   float32 // initial b_g (coordinator.TrainConfig.GateBias)
	// mix, when set, adds a second base's final hidden states as a
	// source (coordinator.Config.Mix); mixName names it.
	mix     *model.Base
	mixName string
	// evals is the number of validation passes over the run (0: 8); they
	// come every steps/evals steps.
	evals int
	// The search's successive halving (not part of the key): checkpoint
	// turns checkpoints on (at a pause and at the end), so that a paused
	// run resumes; pauseAt > 0 pauses the run after that step and scores
	// it on rungVal's validation split instead of the test split.
	checkpoint bool
	pauseAt    int
	rungVal    *dataset.Set
}

func (s spec) key() string {
	k := fmt.Sprintf("%s/%s/h%d/L%d/%d/seed%d/lr%g/src%v/a%g/b%g/e%d", s.data, s.codec, s.width, s.layers, s.steps, s.seed, s.lr, s.sources, s.trainAlpha, s.gateBias, s.evals)
	if s.mix != nil {
		k += "/mix" + s.mix.WeightsHash
	}
	return k
}

// carryOn trains (or recalls) the carry-on of s through the coordinator:
// CollectLocal fills the bridge cache from the shared forward pass, Train
// trains on it.
func (r *runner) carryOn(s spec) (*trained, error) {
	if t, ok := r.done[s.key()]; ok {
		return t, nil
	}
	ds := r.fit
	if s.data == "wide" {
		ds = r.wide
	}
	t, err := trainCarryOn(r.ctx, r.base, r.memo, r.cacheDir, r.log, ds, r.test, s, r.sz)
	if err != nil {
		return nil, err
	}
	r.res.Setup.CarryOnRuns++
	r.res.Setup.TrainSeconds += t.run.StepMS * float64(s.steps) / 1000
	r.logf("carry-on %s: %d params, test loss %.4f (base %.4f), kept step %d (validation %.4f, α %.2f), %.0f ms/step",
		s.key(), t.run.Params, t.run.ValLoss, t.run.BaseLoss, t.run.BestStep, t.run.SelectLoss, t.run.Alpha, t.run.StepMS)
	r.done[s.key()] = t
	return t, nil
}

// cacheDirOrTemp returns dir, or, when dir is "", a new temporary
// directory named after pattern (os.MkdirTemp); remove removes that one
// (and nothing of a given dir).
func cacheDirOrTemp(dir, pattern string) (_ string, remove func(), err error) {
	if dir != "" {
		return dir, func() {}, nil
	}
	if dir, err = os.MkdirTemp("", pattern); err != nil {
		return "", nil, err
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

// trainCarryOn trains the carry-on of s on ds through the coordinator
// (CollectLocal fills the bridge cache from fw, Train trains on it) with
// best-by-validation and α chosen on ds.Val, then scores it on test.Val.
// It touches no runner state, so several can run at once (the search).
func trainCarryOn(ctx context.Context, base *model.Base, fw coordinator.Forwarder, cacheDir string, log *slog.Logger,
	ds, test *dataset.Set, s spec, sz Sizes) (*trained, error) {
	bc := base.Config
	lr := s.lr
	if lr == 0 {
		lr = sz.LR
	}
	cfg := coordinator.Config{CacheDir: cacheDir, Codec: s.codec, Logger: log, Layers: s.sources, ShareReads: true,
		Train: coordinator.TrainConfig{Steps: s.steps, BatchSeqs: sz.Batch, EvalEvery: max(1, s.steps/cmp.Or(s.evals, 8)), Seed: s.seed, CheckpointEvery: -1,
			KeepBest: true, AlphaGrid: alphaGrid, GateBias: s.gateBias}}
	if s.checkpoint {
		cfg.Train.CheckpointEvery = s.steps // a pause also checkpoints
	}
	cfg.Train.Optim.LR = lr
	cfg.Train.CarryOn = carryOnShape(bc.Dim, bc.Vocab, s.width, s.layers)
	if s.mix != nil {
		cfg.Mix = []coordinator.MixBase{{Base: s.mix}}
	}
	if s.trainAlpha != 0 {
		cfg.Train.CarryOn.Alpha = s.trainAlpha
	}
	// The search's trials open coordinators on one cache directory at
	// once: opening (the block store creates its directories) and
	// closing take turns.
	t0 := time.Now()
	openMu.Lock()
	c, err := coordinator.New(nil, nil, base, cfg)
	openMu.Unlock()
	if err != nil {
		return nil, err
	}
	defer func() {
		openMu.Lock()
		c.Close()
		openMu.Unlock()
	}()
	if err := c.CollectLocal(ctx, ds, fw, nil); err != nil {
		return nil, err
	}
	run := CarryOnRun{Data: s.data, Codec: s.codec, Width: s.width, Layers: s.layers, Steps: s.steps, Seed: s.seed, Sources: s.sources, GateBias: s.gateBias, Mix: s.mixName, BestLoss: math.Inf(1)}
	run.Phases.Open = time.Since(t0).Seconds()
	var sec float64
	mark := time.Now()
	res, err := c.Train(ctx, ds, coordinator.Hooks{
		Step: func(coordinator.StepInfo) {
			sec += time.Since(mark).Seconds()
			mark = time.Now()
		},
		Eval: func(e coordinator.EvalInfo) {
			if len(run.Curve.Step) == 0 {
				run.Curve.add(0, 0, e.BaseLoss) // W_Δ = 0: training starts at the base's loss
			}
			run.Curve.add(e.Step, sec, e.Loss)
			if e.Loss < run.BestLoss {
				run.BestLoss, run.BestStep = e.Loss, e.Step
			}
			mark = time.Now() // validation time is not training time
		},
		Pause: func(step int) bool { return step == s.pauseAt },
	})
	if err != nil {
		return nil, err
	}
	blob, err := res.CarryOn.Marshal(res.Meta)
	if err != nil {
		return nil, err
	}
	run.Params, run.AdaptorBytes = len(res.CarryOn.Params), len(blob)
	run.SelectLoss, run.TrainLoss = res.Meta.Metrics["val_loss"], res.Meta.Metrics["train_loss"]
	run.BestStep, run.Alpha = res.Best, res.CarryOn.Config.Alpha
	tm := res.Timing
	run.Phases.Load, run.Phases.Steps, run.Phases.Eval, run.Phases.Alpha = tm.Load.Seconds(), tm.Steps.Seconds(), tm.Eval.Seconds(), tm.Alpha.Seconds()
	run.Stopped = res.Stopped
	run.StepMS = 1000 * sec / float64(max(1, len(res.Steps)))
	if s.pauseAt > 0 {
		// Paused at a rung: scored on the rung's validation subset only.
		t0 = time.Now()
		ev, err := c.Evaluate(s.rungVal, res.CarryOn)
		if err != nil {
			return nil, err
		}
		run.Phases.Eval += time.Since(t0).Seconds()
		run.SelectLoss, run.BestLoss, run.BestStep = ev.Loss, 0, 0 // no validation pass on the whole split
		return &trained{run: run, co: res.CarryOn}, nil
	}
	t0 = time.Now()
	if err := c.CollectLocal(ctx, test, fw, nil); err != nil {
		return nil, err
	}
	ev, err := c.Evaluate(test, res.CarryOn)
	if err != nil {
		return nil, err
	}
	run.Phases.Test = time.Since(t0).Seconds()
	run.ValLoss, run.BaseLoss = ev.Loss, ev.BaseLoss
	return &trained{run: run, co: res.CarryOn}, nil
}

// openMu serialises opening and closing coordinators (trainCarryOn).
var openMu sync.Mutex

// main is the reference carry-on: h = 64, L = 2, q8, on the fitting
// problems.
func (r *runner) main(data string) spec {
	return spec{data: data, codec: "q8", width: 64, layers: 2, steps: r.sz.Steps, seed: 1}
}

// lossExp: held-out answer-token loss, base alone vs base + carry-on,
// trained on the fitting problems and on the wide set; a second seed of
// the first measures the run-to-run spread.
func (r *runner) lossExp() error {
	seed2 := r.main("fit")
	seed2.seed = 2
	runs, err := r.runs([]spec{r.main("fit"), seed2, r.main("wide")})
	if err != nil {
		return err
	}
	r.res.Loss = &LossResult{BaseLoss: r.res.Setup.BaseLoss, Runs: runs}
	return nil
}

// runs trains (or takes from those done before) the carry-on of each
// spec, in order.
func (r *runner) runs(specs []spec) ([]CarryOnRun, error) {
	var out []CarryOnRun
	for _, s := range specs {
		t, err := r.carryOn(s)
		if err != nil {
			return nil, err
		}
		out = append(out, t.run)
	}
	return out, nil
}

// bridgeExp: the main carry-on under each bridge setting.
func (r *runner) bridgeExp() error {
	D := r.base.Config.Dim
	out := &BridgeResult{F32BytesPerToken: 4 * D}
	val := sequences(r.test.Val)
	for _, name := range []string{"bf16", "q8", "q4g64", "q4", "q2"} {
		s := r.main("fit")
		s.codec = name
		t, err := r.carryOn(s)
		if err != nil {
			return err
		}
		codec, err := tensor.ParseCodec(name)
		if err != nil {
			return err
		}
		// Relative error of the bridge on the held-out hidden states.
		var num, den float64
		var buf []byte
		var dec []float32
		for _, e := range val {
			hs, err := r.memo.Forward(e.Tokens, []int{model.FinalLayer})
			if err != nil {
				return err
			}
			T := len(e.Tokens)
			buf = codec.Encode(buf[:0], hs[0], T, D)
			dec = append(dec[:0], make([]float32, T*D)...)
			if err := codec.Decode(dec, buf, T, D); err != nil {
				return err
			}
			for i, x := range hs[0] {
				d := float64(dec[i] - x)
				num += d * d
				den += float64(x) * float64(x)
			}
		}
		out.Rows = append(out.Rows, BridgeRow{Codec: name, BytesPerToken: codec.EncodedSize(1, D), RelError: math.Sqrt(num / den),
			BaseLoss: t.run.BaseLoss, ValLoss: t.run.ValLoss, BestLoss: t.run.BestLoss})
	}
	r.res.Bridge = out
	return nil
}

// shapeExp: width and depth.
func (r *runner) shapeExp() error {
	var specs []spec
	for _, h := range []int{64, 256} {
		for _, l := range []int{1, 2, 3} {
			s := r.main("fit")
			s.width, s.layers = h, l
			specs = append(specs, s)
		}
	}
	runs, err := r.runs(specs)
	if err != nil {
		return err
	}
	r.res.Shape = &ShapeResult{Runs: runs}
	return nil
}
