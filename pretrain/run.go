package pretrain

import (
	"carryon/model"
	"carryon/tensor"
	"carryon/tokenizer"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"
)

// Run is the whole of carryon pretrain: read a corpus, hold out every N-th
// document, train a byte-level BPE tokenizer (or take --init's), pretrain a
// Qwen2-architecture base from scratch or continue one (context extension),
// save it as a Hugging Face directory and report losses and samples.

// EOT ends every document of the corpus; it is the base's BOS and EOS.
const EOT = "<|endoftext|>"

// RunOptions are carryon pretrain's settings (its flags). Zero values are
// not defaults: the command line fills every field.
type RunOptions struct {
	Corpus, Out                             string // text file or directory of documents; output HF directory
	Vocab, Dim, Layers, Heads, KVHeads, FFN int    // FFN 0: 8/3·Dim rounded up to a multiple of 32
	// ArchFlags holds the architecture settings given explicitly (by flag
	// name: vocab, dim, layers, heads, kv-heads, ffn); with Init they must
	// agree with the model.
	ArchFlags map[string]int
	Seq       int    // training window (max_position_embeddings)
	Init      string // continue from this HF directory written by pretrain
	// Tokenizer, when set, is a tokenizer.json used instead of training a
	// BPE on the corpus (bases that share a tokenizer can be mixed as
	// carry-on sources). Not with Init, whose tokenizer is used.
	Tokenizer                     string
	RopeTheta                     float64 // 0: 1e4 or Init's
	Batch, Steps, Warmup          int
	LR, MinLR, WD, Clip           float64
	Seed                          uint64
	Workers, EvalEvery, CkptEvery int
	Minutes                       float64 // stop after this long (0: no limit); the run can be resumed
	BF16                          bool    // store weights as bfloat16
	ValEveryDoc                   int     // hold out every N-th document
}

// Run trains and saves a base as RunOptions say, writing progress to stdout.
func Run(ctx context.Context, o RunOptions, stdout io.Writer) error {
	if o.Corpus == "" || o.Out == "" {
		return errors.New("--corpus and --out are required")
	}
	if o.FFN == 0 {
		o.FFN = (8*o.Dim/3 + 31) / 32 * 32
	}
	var initBase *model.Base
	if o.Init != "" {
		var err error
		if initBase, err = model.LoadBase(o.Init); err != nil {
			return fmt.Errorf("--init: %w", err)
		}
		defer initBase.Close()
		ic := initBase.Config
		// Architecture flags given explicitly must agree with the model.
		want := map[string]int{"vocab": ic.Vocab, "dim": ic.Dim, "layers": ic.Layers, "heads": ic.Heads, "kv-heads": ic.KVHeads, "ffn": ic.FFN}
		var bad error
		for name, w := range want {
			if v, ok := o.ArchFlags[name]; ok && bad == nil && v != w {
				bad = fmt.Errorf("--%s %d does not match the --init model %s (%s %d); leave architecture flags out with --init", name, v, o.Init, name, w)
			}
		}
		if bad != nil {
			return bad
		}
		if ic.Arch != "qwen2" && ic.Arch != "llama" || ic.HeadDim != ic.Dim/ic.Heads {
			return fmt.Errorf("--init: %s is a %s model with head_dim %d: want a qwen2 or llama model as pretrain writes", o.Init, ic.Arch, ic.HeadDim)
		}
		if o.Seq < ic.MaxPos {
			return fmt.Errorf("--init: --seq %d is shorter than the model's context %d: the context would shrink", o.Seq, ic.MaxPos)
		}
		o.RopeTheta = cmp.Or(o.RopeTheta, ic.RopeTheta)
	}
	o.RopeTheta = cmp.Or(o.RopeTheta, 1e4)
	if o.ValEveryDoc < 2 {
		return errors.New("--val-every-doc must be >= 2")
	}
	docs, err := tokenizer.ReadCorpus(o.Corpus)
	if err != nil {
		return err
	}
	var trainDocs, valDocs []string
	for i, d := range docs {
		if i%o.ValEveryDoc == o.ValEveryDoc-1 {
			valDocs = append(valDocs, d)
		} else {
			trainDocs = append(trainDocs, d)
		}
	}
	if len(valDocs) == 0 {
		return fmt.Errorf("%d documents: too few to hold out every %d-th", len(docs), o.ValEveryDoc)
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	tokPath := filepath.Join(o.Out, "tokenizer.json")
	t0 := time.Now()
	var tokJSON []byte
	switch {
	case initBase != nil && o.Tokenizer != "":
		return errors.New("--tokenizer and --init: the --init model's tokenizer is used; give one of them")
	case initBase != nil:
		tokJSON, err = os.ReadFile(filepath.Join(o.Init, "tokenizer.json"))
	case o.Tokenizer != "":
		tokJSON, err = os.ReadFile(o.Tokenizer)
	default:
		var bpe *tokenizer.BPEVocab
		bpe, err = tokenizer.TrainBPE(trainDocs, o.Vocab, []string{EOT})
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
	tok, err := tokenizer.LoadTokenizer(tokPath)
	if err != nil {
		return err
	}
	eot, ok := tok.ID(EOT)
	if !ok {
		return fmt.Errorf("%s: %s is missing", tokPath, EOT)
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
	cfg := model.Config{Arch: "qwen2", Dim: o.Dim, Layers: o.Layers, Heads: o.Heads, KVHeads: o.KVHeads,
		HeadDim: o.Dim / max(1, o.Heads), FFN: o.FFN, Vocab: tok.VocabSize(), MaxPos: o.Seq, RopeTheta: o.RopeTheta,
		NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true, BOS: eot, EOS: eot}
	var evalWindows []int // window lengths of the before/after report
	if initBase != nil {
		if tok.VocabSize() != initBase.Config.Vocab {
			return fmt.Errorf("--init: %s/tokenizer.json has %d ids, the model %d", o.Init, tok.VocabSize(), initBase.Config.Vocab)
		}
		cfg = initBase.Config
		cfg.MaxPos, cfg.RopeTheta = o.Seq, o.RopeTheta
		evalWindows = []int{initBase.Config.MaxPos}
		if o.Seq > initBase.Config.MaxPos {
			evalWindows = append(evalWindows, o.Seq)
		}
		fmt.Fprintf(stdout, "init: %s (context %d, rope theta %g) -> context %d, rope theta %g\n", o.Init, initBase.Config.MaxPos, initBase.Config.RopeTheta, cfg.MaxPos, cfg.RopeTheta)
	}
	fmt.Fprintf(stdout, "model: %+v, %d parameters\n", cfg, cfg.NumParams())
	fmt.Fprintf(stdout, "unigram loss on val: %.4f nats/token\n", UnigramLoss(train, val, cfg.Vocab))
	if initBase != nil {
		b, err := initBase.WithContext(cfg.MaxPos, cfg.RopeTheta)
		if err != nil {
			return err
		}
		if err := reportWindows(stdout, "before", b, val, evalWindows); err != nil {
			return err
		}
	}
	to := Options{Config: cfg, Seed: o.Seed, SeqLen: o.Seq, Batch: o.Batch, Steps: o.Steps, Warmup: o.Warmup,
		LR: float32(o.LR), MinLR: float32(o.MinLR), WeightDecay: float32(o.WD), ClipNorm: o.Clip, Workers: o.Workers, Init: initBase,
		EvalEvery: o.EvalEvery, EvalWindows: 64, CheckpointTo: filepath.Join(o.Out, "checkpoint"), CkptEvery: o.CkptEvery, LogEvery: 10,
		Progress: func(p Progress) {
			v := ""
			if !math.IsNaN(p.ValLoss) {
				v = fmt.Sprintf(" val %.4f", p.ValLoss)
			}
			fmt.Fprintf(stdout, "step %5d loss %.4f%s lr %.2e gnorm %.3f tok/s %.0f elapsed %s\n",
				p.Step, p.TrainLoss, v, p.LR, p.GradNorm, p.TokPerSec, p.Elapsed.Round(time.Second))
		}}
	if o.Minutes > 0 {
		to.Deadline = time.Now().Add(time.Duration(o.Minutes * float64(time.Minute)))
	}
	res, err := Train(ctx, to, train, val)
	if err != nil {
		return err
	}
	if res.ResumedAt > 0 {
		fmt.Fprintf(stdout, "resumed from the checkpoint at step %d\n", res.ResumedAt)
	}
	fmt.Fprintf(stdout, "trained %d steps, %d tokens in %s (%.0f tok/s); train loss %.4f (last 10 steps), val loss %.4f\n",
		res.Steps, res.Tokens, res.Elapsed.Round(time.Second), res.TokPerSec, res.TrainLoss, res.ValLoss)
	if res.CutShort {
		fmt.Fprintf(stdout, "stopped before --steps %d; run the same command again to resume from %s\n", o.Steps, to.CheckpointTo)
	}
	save := res.Trainer.Base.SaveHF
	if o.BF16 {
		save = res.Trainer.Base.SaveHFBF16
	}
	if err := save(o.Out); err != nil {
		return err
	}
	// Reload what was written (bf16 rounding included) and report its loss.
	b, err := model.LoadBase(o.Out)
	if err != nil {
		return err
	}
	defer b.Close()
	chk, err := model.NewBaseTrainer(b, o.Workers, o.Seq)
	if err != nil {
		return err
	}
	var sum float64
	var n int
	for s := 0; s+o.Seq+1 <= len(val); s += o.Seq {
		l, k, err := chk.Loss([][]int32{val[s : s+o.Seq+1]})
		if err != nil {
			return err
		}
		sum, n = sum+l, n+k
	}
	fmt.Fprintf(stdout, "saved %s: full val loss %.4f nats/token over %d tokens\n", o.Out, sum/float64(n), n)
	if err := reportWindows(stdout, "after", b, val, evalWindows); err != nil {
		return err
	}
	for _, prompt := range []string{"The jury said", "In the morning", "He looked at her and"} {
		ids, err := GreedyGenerate(b, tok.EncodeOrdinary(prompt), 40, eot)
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
				l := tensor.LogSumExp(row) - float64(row[val[s+t+1]])
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
