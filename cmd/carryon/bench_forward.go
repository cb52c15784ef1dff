package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"carryon/model"
	"carryon/tensor"
)

// forwardBenchResult is the one JSON line of `carryon bench forward`.
type forwardBenchResult struct {
	Impl         string    `json:"impl"`
	Model        string    `json:"model"`
	Arch         string    `json:"arch"`
	ModelBytes   int64     `json:"model_bytes"` // weight files on disk
	Tokens       int       `json:"tokens"`
	Threads      int       `json:"threads"`
	Runs         int       `json:"runs"`
	TokensPerSec float64   `json:"tokens_per_s"`
	MedianS      float64   `json:"median_s"`
	TimesS       []float64 `json:"times_s"`
	CPUS         []float64 `json:"cpu_s,omitempty"` // process CPU seconds of each run (Linux): robust to a shared machine
	LoadS        float64   `json:"load_s"`
	PeakRSSBytes int64     `json:"peak_rss_bytes"` // VmHWM
	// Kernel paths: the float32 GEMM, and the int8 one with --int8.
	Kernel     string `json:"kernel"`
	Int8Kernel string `json:"int8_kernel,omitempty"`
	// Numerics is model.Base.Numerics ("bf16-activations" for a BF16 file
	// by default, absent with --exact-bf16 or other weights).
	Numerics string `json:"numerics,omitempty"`
	// Decode (--decode N): N single-token steps after the prefill (KV
	// cache, LM head on each), median over the runs.
	Decode             int     `json:"decode,omitempty"`
	DecodeTokensPerSec float64 `json:"decode_tokens_per_s,omitempty"`
}

// benchForward measures prefill like llama.cpp's bench.mjs / llama-bench
// pp: --tokens pseudo-random ids (fixed seed) through the base in one
// forward pass, then the LM head for the last position only; one warm-up
// run, then the median of --runs. The caller dispatches `bench forward`
// here with the arguments after "forward".
func benchForward(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench", "forward --model PATH [--tokens 512] [--threads N] [--runs 3]", stderr)
	modelFlag := fs.String("model", "", "base model: a .gguf file or a directory with config.json + safetensors")
	tokens := fs.Int("tokens", 512, "prompt length")
	threads := fs.Int("threads", runtime.NumCPU(), "threads (GOMAXPROCS)")
	runs := fs.Int("runs", 3, "timed runs after one warm-up")
	decode := fs.Int("decode", 0, "also time N decode steps (batch 1, KV cache) after the prefill")
	int8 := fs.Bool("int8", false, "Q8_0 GGUF: int8 activations and int8 dot products (model.LoadOptions.Int8)")
	exactBF16 := addExactBF16Flag(fs)
	// --cpuprofile FILE (hidden: a developer's flag, not in the usage)
	// writes a CPU profile of the timed prefill runs.
	rest, cpuProfile, err := cutHiddenFlag(args, "cpuprofile")
	if err != nil {
		return err
	}
	if err := parseFlags(fs, rest); err != nil {
		return err
	}
	if *modelFlag == "" || *tokens < 1 || *threads < 1 || *runs < 1 || *decode < 0 {
		fs.Usage()
		return errors.New("--model is required; --tokens, --threads and --runs must be >= 1")
	}
	runtime.GOMAXPROCS(*threads)
	start := time.Now()
	m, err := model.Open(*modelFlag, model.OpenOptions{WithoutTokenizer: true, Load: model.LoadOptions{Int8: *int8, ExactBF16: *exactBF16}})
	if err != nil {
		return err
	}
	base := m.Base
	defer base.Close()
	res := forwardBenchResult{Impl: "carryon", Model: filepath.Base(*modelFlag), Arch: base.Config.Arch,
		Tokens: *tokens, Threads: *threads, Runs: *runs, LoadS: time.Since(start).Seconds(),
		Kernel: tensor.GemmPath(), Decode: *decode, Numerics: base.Numerics()}
	if *int8 {
		res.Int8Kernel = "in place " + tensor.Q8Path()
		if tensor.Q8PackedFast() {
			res.Int8Kernel = "packed " + tensor.Q8PackedPath()
		}
	}
	if res.ModelBytes, err = weightBytes(*modelFlag); err != nil {
		return err
	}
	if *tokens+*decode > base.Config.MaxPos {
		return fmt.Errorf("--tokens %d exceeds the model's context %d", *tokens, base.Config.MaxPos)
	}
	rng := rand.New(rand.NewPCG(1234, 5678))
	ids := make([]int32, *tokens)
	for i := range ids {
		ids[i] = int32(rng.IntN(base.Config.Vocab))
	}
	for r := -1; r < *runs; r++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if r == 0 {
			stop, err := startCPUProfile(cpuProfile)
			if err != nil {
				return fmt.Errorf("bench forward: %w", err)
			}
			defer stop()
		}
		t0, c0 := time.Now(), processCPU()
		out, err := base.Forward(ids, []int{model.FinalLayer})
		if err != nil {
			return err
		}
		D := base.Config.Dim
		base.Logits(out[0][(len(ids)-1)*D:], 1)
		if r >= 0 {
			res.TimesS = append(res.TimesS, time.Since(t0).Seconds())
			if c0 >= 0 {
				res.CPUS = append(res.CPUS, processCPU()-c0)
			}
		}
	}
	sorted := slices.Clone(res.TimesS)
	slices.Sort(sorted)
	res.MedianS = sorted[len(sorted)/2]
	res.TokensPerSec = float64(*tokens) / res.MedianS
	if *decode > 0 {
		tps, err := benchDecode(ctx, base, ids, *decode, *runs)
		if err != nil {
			return err
		}
		res.DecodeTokensPerSec = tps
	}
	res.PeakRSSBytes, _ = procStatus("VmHWM")
	line, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", line)
	return err
}

// benchDecode prefills ids into a session, then times n greedy decode
// steps (one token each: the blocks with the KV cache, then the LM head),
// once as a warm-up and then runs times; it returns the median tokens/s.
func benchDecode(ctx context.Context, base *model.Base, ids []int32, n, runs int) (float64, error) {
	s, err := base.NewSession(len(ids)+n, []int{model.FinalLayer})
	if err != nil {
		return 0, err
	}
	D := base.Config.Dim
	var rates []float64
	for r := -1; r < runs; r++ {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		s.Reset()
		out, err := s.Prefill(ids)
		if err != nil {
			return 0, err
		}
		next := model.Argmax(base.Logits(out[0][(len(ids)-1)*D:], 1))
		t0 := time.Now()
		for range n {
			out, err := s.Step(next)
			if err != nil {
				return 0, err
			}
			next = model.Argmax(base.Logits(out[0], 1))
		}
		if r >= 0 {
			rates = append(rates, float64(n)/time.Since(t0).Seconds())
		}
	}
	slices.Sort(rates)
	return rates[len(rates)/2], nil
}

// processCPU returns the user+system CPU seconds of this process from
// /proc/self/stat (in USER_HZ = 100 ticks), or -1 where that is missing.
func processCPU() float64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return -1
	}
	// Fields after the ")" that ends the command name: state is field 3,
	// utime 14 and stime 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return float64(u+s) / 100
}

// weightBytes is the size of a GGUF file, or of the safetensors files of
// a checkpoint directory.
func weightBytes(spec string) (int64, error) {
	st, err := os.Stat(spec)
	if err != nil {
		return 0, err
	}
	if st.Mode().IsRegular() {
		return st.Size(), nil
	}
	files, err := filepath.Glob(filepath.Join(spec, "*.safetensors"))
	if err != nil {
		return 0, err
	}
	var n int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			n += fi.Size()
		}
	}
	return n, nil
}
