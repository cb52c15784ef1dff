//go:build cuda

// Command devbench measures the GPU for scripts/device-check.sh (never a
// timed test). It prints one JSON line per run.
//
// -mode prefill (the default) writes a random BF16 checkpoint of a given
// base shape (default Qwen2.5-0.5B) with model.NewRandomBase, loads it on
// GPU 0 through devmodel, times a prefill of -batch sequences of -seq
// tokens, and writes the token ids and the final hidden states of the
// first sequence so that scripts/device_torch.py can run PyTorch on the
// same weights and compare.
//
// -mode train and -mode memory run the carry-on's training step on GPU 0
// (carryon.DeviceTrainer), mirroring device_torch.py's modes of the same
// names (train.go).
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"carryon/cuda"
	"carryon/devmodel"
	"carryon/model"
)

func main() {
	dir := flag.String("dir", "/tmp/carryon-devbench", "where to write the checkpoint, ids.json and hidden.f32")
	batch := flag.Int("batch", 8, "sequences per prefill")
	seq := flag.Int("seq", 512, "tokens per sequence")
	runs := flag.Int("runs", 5, "timed prefills (after one warm-up)")
	mode := flag.String("mode", "prefill", "prefill, train (carry-on training steps/s) or memory (device memory of one carry-on training step)")
	tf := trainFlags()
	flag.Parse()
	var err error
	switch *mode {
	case "prefill":
		err = run(*dir, *batch, *seq, *runs)
	case "train", "memory":
		err = runTrain(*mode, tf, *batch, *seq)
	default:
		err = fmt.Errorf("-mode %q: want prefill, train or memory", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devbench:", err)
		os.Exit(1)
	}
}

// qwen05 is Qwen2.5-0.5B's shape (config.json of the HF release).
var qwen05 = model.Config{Arch: "qwen2", Dim: 896, Layers: 24, Heads: 14, KVHeads: 2, HeadDim: 64, FFN: 4864,
	Vocab: 151936, MaxPos: 32768, RopeTheta: 1e6, NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true, BOS: -1, EOS: 151643}

// openGPU opens GPU 0 as the benchmark's backend and reads its free and
// total memory before anything is placed on it: the baseline of the *_mib
// figures of every mode.
func openGPU() (gpu *cuda.Backend, closeGPU func() error, free0, total int64, err error) {
	be, closeBe, err := cuda.OpenBackend(0)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	gpu = be.(*cuda.Backend)
	if free0, total, err = gpu.MemInfo(); err != nil {
		closeBe()
		return nil, nil, 0, 0, err
	}
	return gpu, closeBe, free0, total, nil
}

func run(dir string, batch, seq, runs int) error {
	t0 := time.Now()
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil {
		b, err := model.NewRandomBase(qwen05, 1)
		if err != nil {
			return err
		}
		if err := b.SaveHFBF16(dir); err != nil {
			return err
		}
		b.Close()
	}
	genS := time.Since(t0).Seconds()

	cb, closeBe, free0, total, err := openGPU()
	if err != nil {
		return err
	}
	defer closeBe()
	t1 := time.Now()
	base, err := devmodel.Load(cb, dir, devmodel.Options{})
	if err != nil {
		return err
	}
	defer base.Close()
	loadS := time.Since(t1).Seconds()
	free1, _, _ := cb.MemInfo()

	r := rand.New(rand.NewPCG(2, 3))
	seqs := make([][]int32, batch)
	for i := range seqs {
		seqs[i] = make([]int32, seq)
		for j := range seqs[i] {
			seqs[i][j] = int32(r.IntN(qwen05.Vocab))
		}
	}
	layers := []int{model.FinalLayer}
	out, err := base.ForwardBatch(seqs, layers) // warm-up (workspace, PTX JIT, cuBLAS)
	if err != nil {
		return err
	}
	free2, _, _ := cb.MemInfo()
	var times []float64
	for i := 0; i < runs; i++ {
		t := time.Now()
		if _, err := base.ForwardBatch(seqs, layers); err != nil {
			return err
		}
		times = append(times, time.Since(t).Seconds())
	}
	slices.Sort(times)
	med := times[len(times)/2]

	ids, _ := json.Marshal(seqs)
	if err := os.WriteFile(filepath.Join(dir, "ids.json"), ids, 0o644); err != nil {
		return err
	}
	h := out[0][0]
	raw := make([]byte, 4*len(h))
	for i, v := range h {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	if err := os.WriteFile(filepath.Join(dir, "hidden.f32"), raw, 0o644); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"impl": "carryon-" + cb.Name(), "batch": batch, "seq": seq, "runs": runs,
		"prefill_s_median": med, "prefill_s_all": times, "tokens_per_s": float64(batch*seq) / med,
		"weights_mib": float64(free0-free1) / (1 << 20), "workspace_mib": float64(free1-free2) / (1 << 20),
		"device_total_mib": float64(total) / (1 << 20), "generate_s": genS, "load_s": loadS,
	})
}
