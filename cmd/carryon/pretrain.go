package main

import (
	"carryon/pretrain"
	"context"
	"flag"
	"io"
	"runtime"
	"strconv"
)

func runPretrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pretrain", "--corpus DIR|FILE --out DIR [flags]", stderr)
	corpus := fs.String("corpus", "", "text file, or directory of documents (Brown-corpus tagged files are detagged)")
	out := fs.String("out", "", "output directory: config.json, model.safetensors, tokenizer.json (checkpoints under OUT/checkpoint)")
	vocab := fs.Int("vocab", 4096, "vocabulary size, including "+pretrain.EOT)
	dim := fs.Int("dim", 256, "hidden size")
	layers := fs.Int("layers", 4, "transformer blocks")
	heads := fs.Int("heads", 4, "attention heads")
	kvHeads := fs.Int("kv-heads", 2, "key/value heads")
	ffn := fs.Int("ffn", 0, "MLP width (0: 8/3·dim rounded up to a multiple of 32)")
	seq := fs.Int("seq", 256, "training window (also max_position_embeddings; with --init, a longer window extends the context)")
	tokFile := fs.String("tokenizer", "", "use this tokenizer.json (one written by pretrain) instead of training a BPE on the corpus; bases that share a tokenizer can be mixed as carry-on sources")
	initDir := fs.String("init", "", "continue from this base (HF dir written by pretrain: config.json, model.safetensors, tokenizer.json): its weights and tokenizer replace random weights and a new BPE; architecture flags must match it")
	ropeTheta := fs.Float64("rope-theta", 0, "RoPE base (0: 1e4, or the --init model's)")
	batch := fs.Int("batch", 16, "windows per step")
	steps := fs.Int("steps", 2000, "optimizer steps (the learning-rate schedule's length)")
	warmup := fs.Int("warmup", 100, "warm-up steps")
	lr := fs.Float64("lr", 2e-3, "peak learning rate")
	minLR := fs.Float64("min-lr", 2e-4, "final learning rate")
	wd := fs.Float64("wd", 0.1, "AdamW weight decay (matrices and embeddings)")
	clip := fs.Float64("clip", 1, "gradient-norm clip")
	seed := fs.Uint64("seed", 1, "seed of the weights and batches")
	workers := fs.Int("workers", runtime.GOMAXPROCS(0), "data-parallel goroutines (changes float summation order)")
	valEvery := fs.Int("eval-every", 100, "steps between validation losses")
	ckptEvery := fs.Int("ckpt-every", 100, "steps between checkpoints")
	minutes := fs.Float64("minutes", 0, "stop training after this many minutes (0: no limit); a cut run can be resumed")
	bf16 := fs.Bool("bf16", true, "store the weights as bfloat16")
	valFrac := fs.Int("val-every-doc", 50, "hold out every N-th document for validation")
	if err := parseFlags(fs, args, "corpus", "out"); err != nil {
		return err
	}
	arch := map[string]int{}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "vocab", "dim", "layers", "heads", "kv-heads", "ffn":
			arch[f.Name], _ = strconv.Atoi(f.Value.String())
		}
	})
	return pretrain.Run(ctx, pretrain.RunOptions{Corpus: *corpus, Out: *out, Vocab: *vocab, Dim: *dim, Layers: *layers,
		Heads: *heads, KVHeads: *kvHeads, FFN: *ffn, ArchFlags: arch, Seq: *seq, Init: *initDir, Tokenizer: *tokFile, RopeTheta: *ropeTheta,
		Batch: *batch, Steps: *steps, Warmup: *warmup, LR: *lr, MinLR: *minLR, WD: *wd, Clip: *clip, Seed: *seed,
		Workers: *workers, EvalEvery: *valEvery, CkptEvery: *ckptEvery, Minutes: *minutes, BF16: *bf16, ValEveryDoc: *valFrac}, stdout)
}
