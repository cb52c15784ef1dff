package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"carryon/model"
)

func init() {
	register("pretrain", "train a small base model (BPE tokenizer + Qwen2 transformer) from scratch on a text corpus, or continue one (--init)", runPretrain)
}

// eotToken ends every document of the corpus; it is the base's BOS and EOS.
const eotToken = "<|endoftext|>"

func runPretrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pretrain", "--corpus DIR|FILE --out DIR [flags]", stderr)
	corpus := fs.String("corpus", "", "text file, or directory of documents (Brown-corpus tagged files are detagged)")
	out := fs.String("out", "", "output directory: config.json, model.safetensors, tokenizer.json (checkpoints under OUT/checkpoint)")
	vocab := fs.Int("vocab", 4096, "vocabulary size, including "+eotToken)
	dim := fs.Int("dim", 256, "hidden size")
	layers := fs.Int("layers", 4, "transformer blocks")
	heads := fs.Int("heads", 4, "attention heads")
	kvHeads := fs.Int("kv-heads", 2, "key/value heads")
	ffn := fs.Int("ffn", 0, "MLP width (0: 8/3·dim rounded up to a multiple of 32)")
	seq := fs.Int("seq", 256, "training window (also max_position_embeddings; with --init, a longer window extends the context)")
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *corpus == "" || *out == "" {
		return errors.New("--corpus and --out are required")
	}
	if *ffn == 0 {
		*ffn = (8**dim/3 + 31) / 32 * 32
	}
	var initBase *model.Base
	if *initDir != "" {
		var err error
		if initBase, err = model.LoadBase(*initDir); err != nil {
			return fmt.Errorf("--init: %w", err)
		}
		defer initBase.Close()
		ic := initBase.Config
		// Architecture flags given explicitly must agree with the model.
		want := map[string]int{"vocab": ic.Vocab, "dim": ic.Dim, "layers": ic.Layers, "heads": ic.Heads, "kv-heads": ic.KVHeads, "ffn": ic.FFN}
		var bad error
		fs.Visit(func(f *flag.Flag) {
			if w, ok := want[f.Name]; ok && bad == nil && f.Value.String() != strconv.Itoa(w) {
				bad = fmt.Errorf("--%s %s does not match the --init model %s (%s %d); leave architecture flags out with --init", f.Name, f.Value, *initDir, f.Name, w)
			}
		})
		if bad != nil {
			return bad
		}
		if ic.Arch != "qwen2" && ic.Arch != "llama" || ic.HeadDim != ic.Dim/ic.Heads {
			return fmt.Errorf("--init: %s is a %s model with head_dim %d: want a qwen2 or llama model as pretrain writes", *initDir, ic.Arch, ic.HeadDim)
		}
		if *seq < ic.MaxPos {
			return fmt.Errorf("--init: --seq %d is shorter than the model's context %d: the context would shrink", *seq, ic.MaxPos)
		}
		if *ropeTheta == 0 {
			*ropeTheta = ic.RopeTheta
		}
	}
	if *ropeTheta == 0 {
		*ropeTheta = 1e4
	}
	if *valFrac < 2 {
		return errors.New("--val-every-doc must be >= 2")
	}
	docs, err := model.ReadCorpus(*corpus)
	if err != nil {
		return err
	}
	var trainDocs, valDocs []string
	for i, d := range docs {
		if i%*valFrac == *valFrac-1 {
			valDocs = append(valDocs, d)
		} else {
			trainDocs = append(trainDocs, d)
		}
	}
	if len(valDocs) == 0 {
		return fmt.Errorf("%d documents: too few to hold out every %d-th", len(docs), *valFrac)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	tokPath := filepath.Join(*out, "tokenizer.json")
	t0 := time.Now()
	var tokJSON []byte
	if initBase != nil {
		tokJSON, err = os.ReadFile(filepath.Join(*initDir, "tokenizer.json"))
	} else {
		var bpe *model.BPEVocab
		bpe, err = model.TrainBPE(trainDocs, *vocab, []string{eotToken})
		if bpe != nil {
			tokJSON = bpe.TokenizerJSON()
		}
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile(tokPath, tokJSON, 0o644); err != nil {
		return err
	}
	tok, err := model.LoadTokenizer(tokPath)
	if err != nil {
		return err
	}
	eot, ok := tok.ID(eotToken)
	if !ok {
		return fmt.Errorf("%s: %s is missing", tokPath, eotToken)
	}
	stream := func(docs []string) []int32 {
		var ids []int32
		for _, d := range docs {
			ids = append(ids, eot)
			ids = append(ids, tok.EncodeOrdinary(d)...)
		}
		return ids
	}
	train, val := stream(trainDocs), stream(valDocs)
	var bytesTrain int
	for _, d := range trainDocs {
		bytesTrain += len(d)
	}
	fmt.Fprintf(stdout, "corpus: %d documents (%d train, %d val), %d train bytes; tokenizer: %d ids in %.1fs; %d train tokens (%.2f bytes/token), %d val tokens\n",
		len(docs), len(trainDocs), len(valDocs), bytesTrain, tok.VocabSize(), time.Since(t0).Seconds(), len(train), float64(bytesTrain)/float64(len(train)), len(val))
	cfg := model.Config{Arch: "qwen2", Dim: *dim, Layers: *layers, Heads: *heads, KVHeads: *kvHeads,
		HeadDim: *dim / max(1, *heads), FFN: *ffn, Vocab: tok.VocabSize(), MaxPos: *seq, RopeTheta: *ropeTheta,
		NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true, BOS: eot, EOS: eot}
	var evalWindows []int // window lengths of the before/after report
	if initBase != nil {
		if tok.VocabSize() != initBase.Config.Vocab {
			return fmt.Errorf("--init: %s/tokenizer.json has %d ids, the model %d", *initDir, tok.VocabSize(), initBase.Config.Vocab)
		}
		cfg = initBase.Config
		cfg.MaxPos, cfg.RopeTheta = *seq, *ropeTheta
		evalWindows = []int{initBase.Config.MaxPos}
		if *seq > initBase.Config.MaxPos {
			evalWindows = append(evalWindows, *seq)
		}
		fmt.Fprintf(stdout, "init: %s (context %d, rope theta %g) -> context %d, rope theta %g\n", *initDir, initBase.Config.MaxPos, initBase.Config.RopeTheta, cfg.MaxPos, cfg.RopeTheta)
	}
	fmt.Fprintf(stdout, "model: %+v, %d parameters\n", cfg, cfg.NumParams())
	fmt.Fprintf(stdout, "unigram loss on val: %.4f nats/token\n", model.UnigramLoss(train, val, cfg.Vocab))
	if initBase != nil {
		b, err := initBase.WithContext(cfg.MaxPos, cfg.RopeTheta)
		if err != nil {
			return err
		}
		if err := reportWindows(stdout, "before", b, val, evalWindows); err != nil {
			return err
		}
	}
	o := model.PretrainOptions{Config: cfg, Seed: *seed, SeqLen: *seq, Batch: *batch, Steps: *steps, Warmup: *warmup,
		LR: float32(*lr), MinLR: float32(*minLR), WeightDecay: float32(*wd), ClipNorm: *clip, Workers: *workers, Init: initBase,
		EvalEvery: *valEvery, EvalWindows: 64, CheckpointTo: filepath.Join(*out, "checkpoint"), CkptEvery: *ckptEvery, LogEvery: 10,
		Progress: func(p model.PretrainProgress) {
			v := ""
			if !math.IsNaN(p.ValLoss) {
				v = fmt.Sprintf(" val %.4f", p.ValLoss)
			}
			fmt.Fprintf(stdout, "step %5d loss %.4f%s lr %.2e gnorm %.3f tok/s %.0f elapsed %s\n",
				p.Step, p.TrainLoss, v, p.LR, p.GradNorm, p.TokPerSec, p.Elapsed.Round(time.Second))
		}}
	if *minutes > 0 {
		o.Deadline = time.Now().Add(time.Duration(*minutes * float64(time.Minute)))
	}
	res, err := model.Pretrain(ctx, o, train, val)
	if err != nil {
		return err
	}
	if res.ResumedAt > 0 {
		fmt.Fprintf(stdout, "resumed from the checkpoint at step %d\n", res.ResumedAt)
	}
	fmt.Fprintf(stdout, "trained %d steps, %d tokens in %s (%.0f tok/s); train loss %.4f (last 10 steps), val loss %.4f\n",
		res.Steps, res.Tokens, res.Elapsed.Round(time.Second), res.TokPerSec, res.TrainLoss, res.ValLoss)
	if res.CutShort {
		fmt.Fprintf(stdout, "stopped before --steps %d; run the same command again to resume from %s\n", *steps, o.CheckpointTo)
	}
	save := res.Trainer.Base.SaveHF
	if *bf16 {
		save = res.Trainer.Base.SaveHFBF16
	}
	if err := save(*out); err != nil {
		return err
	}
	// Reload what was written (bf16 rounding included) and report its loss.
	b, err := model.LoadBase(*out)
	if err != nil {
		return err
	}
	defer b.Close()
	chk, err := model.NewBaseTrainer(b, *workers, *seq)
	if err != nil {
		return err
	}
	var sum float64
	var n int
	for s := 0; s+*seq+1 <= len(val); s += *seq {
		l, k, err := chk.Loss([][]int32{val[s : s+*seq+1]})
		if err != nil {
			return err
		}
		sum, n = sum+l, n+k
	}
	fmt.Fprintf(stdout, "saved %s: full val loss %.4f nats/token over %d tokens\n", *out, sum/float64(n), n)
	if err := reportWindows(stdout, "after", b, val, evalWindows); err != nil {
		return err
	}
	for _, prompt := range []string{"The jury said", "In the morning", "He looked at her and"} {
		ids, err := model.GreedyGenerate(b, tok.EncodeOrdinary(prompt), 40, eot)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "sample: %q -> %q\n", prompt, tok.Decode(ids))
	}
	return nil
}

// reportWindows prints b's validation loss over consecutive windows of each
// length in windows; for a window longer than the first, it also splits the
// loss by position: [0, windows[0]) and [windows[0], W). This shows what a
// context extension did to short windows and to the new positions.
func reportWindows(w io.Writer, label string, b *model.Base, val []int32, windows []int) error {
	for _, win := range windows {
		var sumLo, sumHi float64
		var nLo, nHi int
		for s := 0; s+win+1 <= len(val); s += win {
			h, err := b.Forward(val[s:s+win], []int{model.FinalLayer})
			if err != nil {
				return fmt.Errorf("val loss at window %d: %w", win, err)
			}
			V := b.Config.Vocab
			logits := b.Logits(h[0], win)
			for t := range win {
				row := logits[t*V : (t+1)*V]
				mx := row[0]
				for _, z := range row {
					mx = max(mx, z)
				}
				var se float64
				for _, z := range row {
					se += math.Exp(float64(z - mx))
				}
				l := float64(mx) + math.Log(se) - float64(row[val[s+t+1]])
				if t < windows[0] {
					sumLo, nLo = sumLo+l, nLo+1
				} else {
					sumHi, nHi = sumHi+l, nHi+1
				}
			}
		}
		if nHi == 0 {
			fmt.Fprintf(w, "%s: val loss at window %d: %.4f nats/token over %d positions\n", label, win, sumLo/float64(nLo), nLo)
			continue
		}
		fmt.Fprintf(w, "%s: val loss at window %d: %.4f (positions 0-%d: %.4f, %d-%d: %.4f) over %d positions\n", label, win,
			(sumLo+sumHi)/float64(nLo+nHi), windows[0]-1, sumLo/float64(nLo), windows[0], win-1, sumHi/float64(nHi), nLo+nHi)
	}
	return nil
}
