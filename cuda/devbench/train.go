//go:build cuda

package main

// The carry-on's training step on the GPU, mirroring
// scripts/device_torch.py's train and memory modes: the same shapes and
// defaults (h 64, L 2, 4 heads, FFN 172 over D 896, V 151936; 8 × 512
// positions; 20 timed steps after one warm-up), inputs x ~ N(0, 1), a
// frozen LM head ~ N(0, 0.02²) in float32, uniform random targets, AdamW
// (lr 1e-3, β (0.9, 0.95), eps 1e-8, weight decay 0.01) with clipping at 1.
// The carry-on starts from carryon.New (W_Δ = 0), which costs the same.

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"time"

	"carryon/carryon"
)

type trainOpts struct {
	width, layers, heads, ffn, baseDim, vocab, steps *int
}

func trainFlags() trainOpts {
	return trainOpts{
		width:   flag.Int("width", 64, "train/memory: carry-on width h"),
		layers:  flag.Int("layers", 2, "train/memory: carry-on blocks L"),
		heads:   flag.Int("heads", 4, "train/memory: attention heads"),
		ffn:     flag.Int("ffn", 172, "train/memory: SwiGLU hidden width"),
		baseDim: flag.Int("base-dim", 896, "train/memory: the base's hidden width D"),
		vocab:   flag.Int("vocab", 151936, "train/memory: the base's vocabulary V"),
		steps:   flag.Int("steps", 20, "train: timed steps (after one warm-up)"),
	}
}

// fillNormal fills x with N(0, std²) values from seed, over all cores
// (the 32B shape's head has 778M values).
func fillNormal(x []float32, std float64, seed uint64) {
	w := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for i := range w {
		lo, hi := i*len(x)/w, (i+1)*len(x)/w
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(i)))
			for j := lo; j < hi; j++ {
				x[j] = float32(r.NormFloat64() * std)
			}
		}()
	}
	wg.Wait()
}

func runTrain(mode string, o trainOpts, batch, seq int) error {
	t0 := time.Now()
	cfg := carryon.DefaultConfig(*o.baseDim, *o.vocab).WithWidth(*o.width)
	cfg.Layers, cfg.Heads, cfg.FFN, cfg.MaxSeq = *o.layers, *o.heads, *o.ffn, max(seq, 1)
	m, err := carryon.New(cfg, 1)
	if err != nil {
		return err
	}
	steps := *o.steps
	if mode == "memory" {
		steps = 0
	}
	ocfg := carryon.DefaultOptimConfig(steps + 1)
	ocfg.LR, ocfg.MinLR, ocfg.Warmup = 1e-3, 1e-3, 0 // a constant rate, as PyTorch's
	opt, err := carryon.NewOptimizer(m, ocfg)
	if err != nil {
		return err
	}
	D, V := cfg.D(), cfg.Vocab
	wPred := make([]float32, V*D)
	fillNormal(wPred, 0.02, 2)
	r := rand.New(rand.NewPCG(3, 4))
	seqs := make([]carryon.Seq, batch)
	for b := range seqs {
		x := make([]float32, seq*D)
		fillNormal(x, 1, 10+uint64(b))
		tg := make([]int32, seq)
		for i := range tg {
			tg[i] = int32(r.IntN(V))
		}
		seqs[b] = carryon.Seq{Sources: [][]float32{x}, Targets: tg, T: seq}
	}
	genS := time.Since(t0).Seconds()

	cb, closeBe, free0, total, err := openGPU()
	if err != nil {
		return err
	}
	defer closeBe()
	tr, err := carryon.NewDeviceTrainer(cb, m, opt, wPred, seq, batch*seq)
	if err != nil {
		return err
	}
	defer tr.Close()
	free1, _, _ := cb.MemInfo()
	t1 := time.Now()
	loss0, count, _, err := tr.Step(seqs) // warm-up: PTX JIT, cuBLAS workspaces
	if err != nil {
		return err
	}
	warmS := time.Since(t1).Seconds()
	free2, _, _ := cb.MemInfo()
	res := map[string]any{
		"impl": "carryon-" + cb.Name() + "-f32", "mode": mode, "width": cfg.Width, "layers": cfg.Layers, "heads": cfg.Heads,
		"ffn": cfg.FFN, "base_dim": D, "vocab": V, "seq": seq, "batch": batch, "params": len(m.Params),
		"loss_first_step": loss0 / float64(count), "generate_s": genS, "warmup_step_s": warmS,
		"device_total_mib": float64(total) / (1 << 20),
		// cuMemGetInfo differences: everything the process holds on the
		// device (cuBLAS workspaces included), not an allocator's count.
		"trainer_alloc_mib":        float64(free0-free1) / (1 << 20),
		"device_mib":               float64(free0-free2) / (1 << 20),
		"head_mib":                 float64(4*V*D) / (1 << 20),
		"params_grads_moments_mib": float64(16*len(m.Params)) / (1 << 20),
	}
	if mode == "train" {
		t2 := time.Now()
		var last float64
		for range steps {
			l, c, _, err := tr.Step(seqs)
			if err != nil {
				return err
			}
			last = l / float64(c)
		}
		el := time.Since(t2).Seconds()
		res["steps"] = steps
		res["loss_last_step"] = last
		res["tokens_per_s"] = float64(steps*batch*seq) / el
		res["step_ms"] = el * 1000 / float64(steps)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return fmt.Errorf("devbench: %w", err)
	}
	return nil
}
