package main

import (
	"bufio"
	"bytes"
	"carryon/carryon"
	"carryon/internal/buildinfo"
	"carryon/internal/experiments"
	"carryon/tensor"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

// benchResult is one implementation's line of output.
type benchResult struct {
	Impl         string  `json:"impl"`
	Width        int     `json:"width"`
	Layers       int     `json:"layers"`
	Heads        int     `json:"heads"`
	FFN          int     `json:"ffn"`
	BaseDim      int     `json:"base_dim"`
	Vocab        int     `json:"vocab"`
	Seq          int     `json:"seq"`
	Batch        int     `json:"batch"`
	Steps        int     `json:"steps"`
	Threads      int     `json:"threads"`
	Params       int     `json:"params"`
	TokensPerSec float64 `json:"tokens_per_s"`
	StepMS       float64 `json:"step_ms"`
	PeakRSSMiB   float64 `json:"peak_rss_mib"`
	PerSequence  bool    `json:"per_sequence,omitempty"` // LossAndGrad per sequence, not one batched pass
	CPUSec       float64 `json:"cpu_s,omitempty"`        // process CPU time of the timed steps
	CPUUtil      float64 `json:"cpu_per_wall,omitempty"` // CPU time / wall time (≈ threads when no core idles)
	BLAS         string  `json:"blas,omitempty"`
	GemmGFLOPS   float64 `json:"sgemm_gflops,omitempty"`
	Head         string  `json:"head,omitempty"`   // LM head format (carryon-go)
	Optim8       bool    `json:"optim8,omitempty"` // 8-bit AdamW moments (carryon-go)
	Fused        bool    `json:"fused,omitempty"`  // fused steps, no gradient buffer (carryon-go)
	// HeadKernel is the kernel of the LM-head products (carryon-go): "bf16"
	// (the in-memory head packed in bf16 for AVX512_BF16), "f32" (packed
	// float32), or the file format's decoding path ("bf16-file", ...).
	HeadKernel string `json:"head_kernel,omitempty"`
}

// benchOpts are the trainer's variants.
type benchOpts struct {
	perSeq bool
	optim8 bool
	fused  bool            // LossAndStepQuant: no gradient buffer, no clipping
	clip   float64         // OptimConfig.ClipNorm (unfused)
	head   tensor.GGMLType // 0: float32 in memory; else a memory-mapped GGUF head of this type
	exact  bool            // keep the in-memory head in float32 (no bf16 packing)
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "forward" {
		return benchForward(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "serve" {
		return benchServe(ctx, args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "train" {
		fmt.Fprintf(stderr, "Usage: carryon bench train|forward|serve [flags]\n\n  train    carry-on training tokens/s and peak memory, against PyTorch\n  forward  base prefill tokens/s, peak memory and model bytes\n  serve    'carryon serve' under concurrent clients: tokens/s and latency percentiles\n")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			return flag.ErrHelp
		}
		return errors.New("unknown or missing benchmark (want: train, forward or serve)")
	}
	fs := newFlags("bench", "train --width H --layers L --base-dim D --vocab V --seq S --batch B [flags]", stderr)
	width, layers := addShapeFlags(fs)
	heads := fs.Int("heads", 0, "attention heads (0: width/16, at least 1)")
	baseDim := fs.Int("base-dim", 896, "base hidden width D")
	vocab := fs.Int("vocab", 32000, "vocabulary V (rows of the frozen LM head)")
	seq := fs.Int("seq", 256, "tokens per sequence S")
	batch := fs.Int("batch", 8, "sequences per step B")
	steps := fs.Int("steps", 5, "timed steps (after one warm-up step)")
	threads := fs.Int("threads", runtime.NumCPU(), "threads for both implementations")
	torch := fs.Bool("torch", true, "also run the PyTorch reference")
	python := fs.String("python", "/usr/bin/python3", "Python with PyTorch")
	script := fs.String("torch-script", "", "the PyTorch reference (default: scripts/bench_train_torch.py above the working directory)")
	blas := fs.String("torch-blas", "", "directory with an optimised libblas.so.3 for PyTorch (default: the first OpenBLAS found)")
	coretype := fs.String("torch-openblas-coretype", "auto", "OPENBLAS_CORETYPE for the PyTorch run only: auto (Cooperlake with AVX512_BF16, SkylakeX with AVX-512, Haswell with AVX2: OpenBLAS may not know a newer CPU and fall back to slower kernels), none (OpenBLAS detects), or a name")
	memOnly := fs.Bool("memory-only", false, "build the trainer, run --steps steps and report how its peak memory splits")
	perSeq := fs.Bool("per-sequence", false, "run LossAndGrad once per sequence instead of one LossAndGradBatch over the batch")
	headType := fs.String("head", "f32", "the frozen LM head: f32 (in memory, packed), or bf16, f16, q8_0: written to a GGUF file and memory-mapped in that format")
	optim8 := fs.Bool("optim8", false, "8-bit blockwise AdamW moments (bitsandbytes-style) instead of float32")
	clip := fs.Float64("clip", 1, "gradient clipping at this global norm (0: none; --fused never clips)")
	exactHead := fs.Bool("exact-head", false, "keep the in-memory (--head f32) LM head packed in float32 even where the CPU has the native bf16 kernel (AVX512_BF16), which otherwise multiplies it in bf16")
	fused := fs.Bool("fused", false, "fused steps: each tensor updated as soon as its gradient is complete, no whole-model gradient buffer (needs --head other than f32; no gradient clipping)")
	// --cpuprofile FILE (hidden: a developer's flag, not in the usage)
	// writes a CPU profile of the timed carry-on steps.
	rest, cpuProfile, err := cutHiddenFlag(args[1:], "cpuprofile")
	if err != nil {
		return err
	}
	if err := fs.Parse(rest); err != nil {
		return err
	}
	if *threads < 1 || *steps < 1 || *seq < 2 || *batch < 1 {
		return errors.New("--threads, --steps, --batch must be >= 1 and --seq >= 2")
	}
	runtime.GOMAXPROCS(*threads)
	cfg := defaultShape(*baseDim, *vocab, *width, *layers, 1)
	if *heads > 0 {
		cfg.Heads = *heads
	}
	cfg.MaxSeq = *seq
	if err := cfg.Validate(); err != nil {
		return err
	}
	opts := benchOpts{perSeq: *perSeq, optim8: *optim8, fused: *fused, clip: *clip, exact: *exactHead}
	switch *headType {
	case "f32":
	case "bf16":
		opts.head = tensor.GGMLBF16
	case "f16":
		opts.head = tensor.GGMLF16
	case "q8_0":
		opts.head = tensor.GGMLQ8_0
	default:
		return fmt.Errorf("--head %q: want f32, bf16, f16 or q8_0", *headType)
	}
	if *fused && (opts.head == 0 || *perSeq) {
		return errors.New("--fused needs --head bf16, f16 or q8_0 and a batched pass (not --per-sequence)")
	}
	if *memOnly {
		return benchMemory(cfg, *seq, *batch, *steps, opts, stdout)
	}
	res, err := benchTrainGo(cfg, *seq, *batch, *steps, opts, cpuProfile)
	if err != nil {
		return err
	}
	res.Threads = *threads
	res.Head, res.Optim8, res.Fused = *headType, *optim8, *fused
	res.HeadKernel = headKernel(opts)
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		return err
	}
	if !*torch {
		return nil
	}
	tr, err := benchTrainTorch(ctx, cfg, res, *python, *script, *blas, openBLASCoretype(*coretype), stderr)
	if err != nil {
		return fmt.Errorf("PyTorch reference: %w", err)
	}
	if err := json.NewEncoder(stdout).Encode(tr); err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(map[string]any{
		"ratio_tokens_per_s": res.TokensPerSec / tr.TokensPerSec, "goal": trainGoal(),
		"ratio_peak_rss": res.PeakRSSMiB / tr.PeakRSSMiB,
	})
}

// trainGoal is issue 15's goal for the training speed ratio against
// PyTorch: 3x where the CPU has AVX512_BF16, 2x otherwise.
func trainGoal() float64 {
	if tensor.NativeBF16() {
		return 3
	}
	return 2
}

// headKernel names the kernel the trainer's LM-head products run on.
func headKernel(o benchOpts) string {
	switch {
	case o.head != 0:
		return strings.ToLower(o.head.String()) + "-file"
	case !o.exact && tensor.NativeBF16():
		return "bf16"
	}
	return "f32"
}

// cutHiddenFlag removes "-name V", "--name V", "-name=V" or "--name=V"
// from args (before a "--") and returns the rest and the last V.
func cutHiddenFlag(args []string, name string) (rest []string, val string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(rest, args[i:]...), val, nil
		}
		key, v, hasV := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || key != name {
			rest = append(rest, a)
			continue
		}
		if !hasV {
			if i+1 >= len(args) {
				return nil, "", fmt.Errorf("flag needs an argument: -%s", name)
			}
			i++
			v = args[i]
		}
		val = v
	}
	return rest, val, nil
}

// startCPUProfile starts writing a CPU profile to path (the hidden
// --cpuprofile flag; "" starts none); stop ends the profile and closes the
// file.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// benchSetup is a carry-on trainer on random data.
type benchSetup struct {
	co      *carryon.Model
	opt     *carryon.Optimizer
	ws      *carryon.Workspace
	grads   []float32
	wPred   []float32
	xs      [][]float32
	targets [][]int32
	seqs    []carryon.Seq // the batch, for LossAndGradBatch
	perSeq  bool
	qhead   *tensor.QuantMatrix // the head in a file format (memory-mapped), or nil
	fused   bool
	closers []func() error
}

// close unmaps and removes the head file, if any.
func (s *benchSetup) close() {
	for _, c := range s.closers {
		c()
	}
}

func newBenchSetup(cfg carryon.Config, seq, batch int, o benchOpts, mark func(string)) (*benchSetup, error) {
	perSeq := o.perSeq
	co, err := carryon.New(cfg, 1)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range co.Delta { // W_Δ ≠ 0 so that gradients reach the whole trunk
		co.Delta[i] = float32(0.02 * rng.NormFloat64())
	}
	s := &benchSetup{co: co, perSeq: perSeq}
	if !o.fused {
		s.grads = make([]float32, len(co.Params))
	}
	ocfg := carryon.DefaultOptimConfig(1000)
	ocfg.Moments8bit = o.optim8
	ocfg.ClipNorm = o.clip
	if o.fused {
		ocfg.ClipNorm = 0
		s.grads = nil
	}
	s.fused = o.fused
	if s.opt, err = carryon.NewOptimizer(co, ocfg); err != nil {
		return nil, err
	}
	mark("params_grads_adam")
	D, V := cfg.D(), cfg.Vocab
	if o.head != 0 {
		if err := s.mapHead(o.head, V, D, rng); err != nil {
			return nil, err
		}
	} else {
		s.wPred = make([]float32, V*D)
		for i := range s.wPred {
			s.wPred[i] = float32(0.02 * rng.NormFloat64())
		}
	}
	mark("lm_head")
	for range batch {
		x := make([]float32, seq*D)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		t := make([]int32, seq)
		for i := range t {
			t[i] = int32(rng.IntN(V))
		}
		s.xs, s.targets = append(s.xs, x), append(s.targets, t)
		s.seqs = append(s.seqs, carryon.Seq{Sources: [][]float32{x}, Targets: t, T: seq})
	}
	mark("inputs")
	if perSeq {
		s.ws = co.NewWorkspace(seq)
	} else {
		s.ws = co.NewBatchWorkspace(seq, seq*batch)
	}
	s.ws.HeadBF16 = !o.exact
	mark("workspace")
	return s, nil
}

// mapHead writes a random (V, D) LM head of type t as the tensor
// output.weight of a GGUF file in the temporary directory, a row at a
// time from a buffer outside the Go heap that is released afterwards, and
// memory-maps it (tensor.OpenGGUF) as the trainer's head: its pages are
// file-backed, not private memory.
func (s *benchSetup) mapHead(t tensor.GGMLType, V, D int, rng *rand.Rand) error {
	rb, err := t.RowBytes(D)
	if err != nil {
		return fmt.Errorf("bench train: --head %s: %w", t, err)
	}
	f, err := os.CreateTemp("", "carryon-bench-head-*.gguf")
	if err != nil {
		return fmt.Errorf("bench train: %w", err)
	}
	path := f.Name()
	s.closers = append(s.closers, func() error { return os.Remove(path) })
	fl, free := tensor.AllocFloats((V*rb + 3) / 4)
	data := unsafe.Slice((*byte)(unsafe.Pointer(&fl[0])), V*rb)
	row := make([]float32, D)
	for r := 0; r < V; r++ {
		for i := range row {
			row[i] = float32(0.02 * rng.NormFloat64())
		}
		dst := data[r*rb : (r+1)*rb]
		switch t {
		case tensor.GGMLQ8_0:
			tensor.QuantizeQ8_0(dst, row)
		case tensor.GGMLBF16:
			for i, v := range row {
				binary.LittleEndian.PutUint16(dst[2*i:], tensor.F32ToBF16(v))
			}
		default:
			for i, v := range row {
				binary.LittleEndian.PutUint16(dst[2*i:], tensor.F32ToF16(v))
			}
		}
	}
	w := bufio.NewWriterSize(f, 1<<20)
	err = tensor.WriteGGUF(w, nil, []tensor.GGUFTensor{{Name: "output.weight", Type: t, Dims: []int{D, V}, Data: data}})
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	free()
	if err != nil {
		return fmt.Errorf("bench train: writing the head: %w", err)
	}
	g, err := tensor.OpenGGUF(path)
	if err != nil {
		return fmt.Errorf("bench train: %w", err)
	}
	s.closers = append([]func() error{g.Close}, s.closers...)
	gt, _ := g.Tensor("output.weight")
	q, err := tensor.NewQuantMatrix(t, V, D, gt.Data)
	if err != nil {
		return fmt.Errorf("bench train: %w", err)
	}
	s.qhead = &q
	return nil
}

// step is one optimiser step over the batch: LossAndGradBatch over all
// sequences (or per-sequence LossAndGrad) accumulating the gradient of the
// mean token loss, then AdamW.
func (s *benchSetup) step(seq int) float64 {
	clear(s.grads)
	var loss float64
	n := len(s.xs) * seq
	if s.fused {
		l, _, _ := s.co.LossAndStepQuant(s.ws, s.seqs, *s.qhead, 1/float32(n), s.opt)
		return l / float64(n)
	}
	if s.qhead != nil {
		loss, _ = s.co.LossAndGradBatchQuant(s.ws, s.seqs, *s.qhead, 1/float32(n), s.grads)
	} else if s.perSeq {
		for b, x := range s.xs {
			l, _ := s.co.LossAndGrad(s.ws, [][]float32{x}, s.targets[b], seq, s.wPred, 1/float32(n), s.grads)
			loss += l
		}
	} else {
		loss, _ = s.co.LossAndGradBatch(s.ws, s.seqs, s.wPred, 1/float32(n), s.grads)
	}
	s.opt.Step(s.grads)
	return loss / float64(n)
}

// benchTrainGo times steps optimiser steps after one warm-up step; with
// cpuProfile set it writes a CPU profile of the timed steps there.
func benchTrainGo(cfg carryon.Config, seq, batch, steps int, o benchOpts, cpuProfile string) (benchResult, error) {
	perSeq := o.perSeq
	s, err := newBenchSetup(cfg, seq, batch, o, func(string) {})
	if err != nil {
		return benchResult{}, err
	}
	defer s.close()
	s.step(seq) // warm-up: packing buffers, page faults
	stopProfile, err := startCPUProfile(cpuProfile)
	if err != nil {
		return benchResult{}, fmt.Errorf("bench train: %w", err)
	}
	start, cpu0 := time.Now(), experiments.ProcessCPU()
	for range steps {
		s.step(seq)
	}
	el, cpu := time.Since(start), experiments.ProcessCPU()-cpu0
	stopProfile()
	hwm, _ := procStatus("VmHWM")
	return benchResult{Impl: "carryon-go", Width: cfg.Width, Layers: cfg.Layers, Heads: cfg.Heads, FFN: cfg.FFN,
		BaseDim: cfg.D(), Vocab: cfg.Vocab, Seq: seq, Batch: batch, Steps: steps, Params: len(s.co.Params),
		TokensPerSec: float64(steps*batch*seq) / el.Seconds(), StepMS: el.Seconds() * 1000 / float64(steps),
		PeakRSSMiB: float64(hwm) / (1 << 20), PerSequence: perSeq, CPUSec: cpu.Seconds(), CPUUtil: cpu.Seconds() / el.Seconds()}, nil
}

// benchMemory builds the trainer stage by stage, runs a few steps, and
// reports resident memory after each stage and at the peak.
func benchMemory(cfg carryon.Config, seq, batch, steps int, o benchOpts, stdout io.Writer) error {
	perSeq := o.perSeq
	debug.FreeOSMemory()
	rss0, _ := procStatus("VmRSS")
	prev := rss0
	split := map[string]float64{}
	var order []string
	var privPeak, filePeak int64 // sampled at every stage and step
	sample := func() {
		if p, f, err := smapsRollup(); err == nil {
			privPeak, filePeak = max(privPeak, p), max(filePeak, f)
		}
	}
	mark := func(name string) {
		rss, _ := procStatus("VmRSS")
		split[name+"_mib"] = float64(rss-prev) / (1 << 20)
		order = append(order, name)
		prev = rss
		sample()
	}
	s, err := newBenchSetup(cfg, seq, batch, o, mark)
	if err != nil {
		return err
	}
	defer s.close()
	start := time.Now()
	var loss float64
	var losses []float64
	for range steps {
		loss = s.step(seq)
		losses = append(losses, loss)
		sample()
	}
	el := time.Since(start)
	mark("steps")
	hwm, _ := procStatus("VmHWM")
	P := len(s.co.Params)
	lmHead := int64(cfg.Vocab) * int64(cfg.D()) * 4
	out := map[string]any{
		"impl": "carryon-go", "mode": "memory", "width": cfg.Width, "layers": cfg.Layers, "heads": cfg.Heads,
		"ffn": cfg.FFN, "base_dim": cfg.D(), "vocab": cfg.Vocab, "seq": seq, "batch": batch, "steps": steps,
		"params": P, "loss": loss, "per_sequence": perSeq, "step_ms": el.Seconds() * 1000 / float64(steps),
		"start_rss_mib":                  float64(rss0) / (1 << 20),
		"peak_rss_mib":                   float64(hwm) / (1 << 20),
		"lm_head_mib":                    float64(lmHead) / (1 << 20),
		"peak_rss_without_lm_head_mib":   float64(hwm-lmHead) / (1 << 20),
		"expected_params_grads_adam_mib": float64(4*4*int64(P)) / (1 << 20),
		"rss_growth_by_stage":            split,
		"stages":                         order,
		"head":                           o.head.String(),
		"optim8":                         o.optim8,
		"fused":                          o.fused,
		"head_kernel":                    headKernel(o),
		"clip":                           s.opt.Config.ClipNorm,
		"losses":                         losses,
		// Anonymous (private) and file-backed resident memory, the largest
		// seen after each stage and step (/proc/self/smaps_rollup).
		"private_mib": float64(privPeak) / (1 << 20),
		"file_mib":    float64(filePeak) / (1 << 20),
	}
	if o.head == 0 {
		out["head"] = "f32"
	}
	return json.NewEncoder(stdout).Encode(out)
}

// smapsRollup returns this process's resident anonymous (private) memory
// and its resident file-backed memory (Rss − Anonymous), in bytes, from
// /proc/self/smaps_rollup.
func smapsRollup() (private, file int64, err error) {
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return 0, 0, err
	}
	var rss, anon int64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		f := strings.Fields(v)
		if !ok || len(f) < 1 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "Rss":
			rss = n << 10
		case "Anonymous":
			anon = n << 10
		}
	}
	return anon, rss - anon, nil
}

// procStatus reads a "kB" field of /proc/self/status, in bytes.
func procStatus(field string) (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == field {
			f := strings.Fields(v)
			if len(f) >= 1 {
				n, err := strconv.ParseInt(f[0], 10, 64)
				return n << 10, err
			}
		}
	}
	return 0, fmt.Errorf("/proc/self/status has no %s", field)
}

// findUp looks for rel in the working directory and its parents.
func findUp(rel string) string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// torchBLASDirs are where Debian's optimised BLAS packages put
// libblas.so.3. Debian's PyTorch links the generic libblas.so.3, which is
// the reference (netlib) BLAS unless an optimised one is selected: about 60×
// slower at sgemm here, which would make the comparison meaningless.
var torchBLASDirs = []string{
	"/usr/lib/x86_64-linux-gnu/openblas-pthread",
	"/usr/lib/x86_64-linux-gnu/openblas-openmp",
	"/usr/lib/x86_64-linux-gnu/blis-pthread",
}

// openBLASCoretype resolves --torch-openblas-coretype: "" leaves the
// variable out of the PyTorch command's environment.
func openBLASCoretype(flag string) string {
	switch flag {
	case "none":
		return ""
	case "auto":
		f := buildinfo.Get().Features
		switch {
		case slices.Contains(f, "avx512bf16"):
			return "Cooperlake" // what OpenBLAS 0.3.21 itself detects on Zen 5
		case slices.Contains(f, "avx512f"):
			return "SkylakeX"
		case slices.Contains(f, "avx2"):
			return "Haswell"
		}
		return ""
	}
	return flag
}

func benchTrainTorch(ctx context.Context, cfg carryon.Config, g benchResult, python, script, blasDir, coretype string, stderr io.Writer) (benchResult, error) {
	if script == "" {
		script = findUp(filepath.Join("scripts", "bench_train_torch.py"))
		if script == "" {
			return benchResult{}, errors.New("scripts/bench_train_torch.py not found above the working directory (use --torch-script)")
		}
	}
	if blasDir == "" {
		for _, d := range torchBLASDirs {
			if _, err := os.Stat(filepath.Join(d, "libblas.so.3")); err == nil {
				blasDir = d
				break
			}
		}
	}
	th := strconv.Itoa(g.Threads)
	cmd := exec.CommandContext(ctx, python, script,
		"--width", strconv.Itoa(cfg.Width), "--layers", strconv.Itoa(cfg.Layers), "--heads", strconv.Itoa(cfg.Heads),
		"--ffn", strconv.Itoa(cfg.FFN), "--base-dim", strconv.Itoa(cfg.D()), "--vocab", strconv.Itoa(cfg.Vocab),
		"--seq", strconv.Itoa(g.Seq), "--batch", strconv.Itoa(g.Batch), "--steps", strconv.Itoa(g.Steps), "--threads", th)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "OPENBLAS_CORETYPE=") {
			env = append(env, e)
		}
	}
	cmd.Env = append(env, "OMP_NUM_THREADS="+th, "OPENBLAS_NUM_THREADS="+th, "MKL_NUM_THREADS="+th)
	if coretype != "" {
		cmd.Env = append(cmd.Env, "OPENBLAS_CORETYPE="+coretype)
	}
	if blasDir != "" {
		cmd.Env = append(cmd.Env, "LD_LIBRARY_PATH="+blasDir+":"+os.Getenv("LD_LIBRARY_PATH"))
	} else {
		fmt.Fprintf(stderr, "bench: no optimised BLAS found for PyTorch (install libopenblas0-pthread): its numbers are the reference BLAS's\n")
	}
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return benchResult{}, err
	}
	var r benchResult
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return benchResult{}, fmt.Errorf("parse %q: %w", lines[len(lines)-1], err)
	}
	if blasDir != "" {
		r.BLAS += " via " + blasDir
	}
	if coretype != "" {
		r.BLAS += " OPENBLAS_CORETYPE=" + coretype
	}
	return r, nil
}
