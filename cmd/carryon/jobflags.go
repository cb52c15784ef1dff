package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"carryon/carryon"
	"carryon/coordinator"
	"carryon/cuda"
	"carryon/dataset"
	"carryon/internal/demo"
	"carryon/model"
	"carryon/tensor"
	"carryon/tokenizer"
)

// jobFlags are the flags of a training job, shared by `carryon coordinator`
// (data embedded by the swarm) and `carryon train` (embedded here).
type jobFlags struct {
	model, data, cache, codec, parent  *string
	mix                                *string
	device                             *string
	seqLen, steps, batch, width, depth *int
	lr, alpha, gateBias                *float64
	keepBest                           *bool
	alphaGrid                          *string
	headBF16, exactBF16                *bool
}

func addJobFlags(fs *flag.FlagSet) *jobFlags {
	f := &jobFlags{
		model:     addModelFlag(fs),
		exactBF16: addExactBF16Flag(fs),
		data:      fs.String("data", "default", "data file: JSONL (text, prompt/completion or question/answer) or plain text; \"default\" for the demo's problems"),
		cache:     fs.String("cache", defaultCoordinatorCache(), "embedding cache and adaptor store (shared by 'carryon coordinator' and 'carryon train')"),
		codec:     fs.String("codec", "q8", "bridge setting the embeddings are made and cached with"),
		mix:       fs.String("mix", "", `further bases whose final hidden states are sources of the carry-on too (a mixture of bases), comma-separated: directories, .gguf files, "default" or "tiny"; each must have --model's tokenizer, and nodes serving it compute its embeddings (with --codec). The adaptor reads them as "base:<hash>:final": it is trained and scored on the cache, and generate, eval and serve run it given the same bases (their --mix)`),
		parent:    fs.String("parent", "", "train a boosting stage on top of this adaptor (a file, or a CID in the store)"),
		seqLen:    fs.Int("seq-len", 0, "tokens per sequence at most; longer question/answer pairs lose the start of the question (0: the base's context, at most 2048)"),
		steps:     fs.Int("steps", 300, "training steps"),
		batch:     fs.Int("batch", 8, "sequences per training step"),
		lr:        fs.Float64("lr", 3e-3, "peak learning rate"),
		alpha:     fs.Float64("alpha", 1, "carry-on scale α"),
		gateBias:  fs.Float64("gate-bias", 0, "initial gate bias b_g: the gate starts at sigmoid(b_g) (0: one half)"),
		keepBest:  fs.Bool("keep-best", true, "keep the weights of the validation pass with the lowest loss, not the last step's (--keep-best=false: the last)"),
		alphaGrid: fs.String("alpha-grid", "", `after training, choose α on the validation split among these values, e.g. "0,0.5,1,1.5" (0 is the base alone); empty: keep --alpha`),
		headBF16:  fs.Bool("head-bf16", true, "multiply the frozen LM head in bf16 where the CPU has AVX512_BF16 (about 1.6x faster steps, loss within 1e-3 relative; elsewhere it stays float32); --head-bf16=false: exact float32"),
		device:    fs.String("device", "cpu", "training device: cpu, or cuda (GPU 0; needs a binary built with -tags cuda)"),
	}
	f.width, f.depth = addShapeFlags(fs)
	return f
}

// addShapeFlags adds --width and --layers, the carry-on's shape as
// defaultShape takes it (train, coordinator, bench train).
func addShapeFlags(fs *flag.FlagSet) (width, layers *int) {
	return fs.Int("width", 64, "carry-on width h"), fs.Int("layers", 2, "carry-on blocks L")
}

// openOptions are the model.OpenOptions of --model and --mix.
func (f *jobFlags) openOptions() model.OpenOptions {
	return model.OpenOptions{Load: model.LoadOptions{ExactBF16: *f.exactBF16}}
}

// parse parses a training command's flags (parseFlags, with required),
// checks the job flags and opens the training device (openDevice).
func (f *jobFlags) parse(fs *flag.FlagSet, args []string, required ...string) (tensor.Backend, func() error, error) {
	if err := parseFlags(fs, args, required...); err != nil {
		return nil, nil, err
	}
	if err := f.check(); err != nil {
		return nil, nil, err
	}
	return f.openDevice()
}

// openDevice opens the training device of --device: nil for the CPU, or
// GPU 0's backend for cuda (its closer must be called when training ends).
// A plain build says it was built without CUDA.
func (f *jobFlags) openDevice() (tensor.Backend, func() error, error) {
	switch *f.device {
	case "cpu":
		return nil, func() error { return nil }, nil
	case "cuda":
		be, closeBe, err := cuda.OpenBackend(0)
		if err != nil {
			return nil, nil, fmt.Errorf("--device cuda: %w", err)
		}
		return be, closeBe, nil
	}
	return nil, nil, fmt.Errorf("--device %q: want cpu or cuda", *f.device)
}

// readData reads --data ("default": the demo's generated problems) for
// base, and prints what happened to its records. A zero SeqLen becomes the
// base's context, at most 2048 tokens.
func (f *jobFlags) readData(ctx context.Context, base *model.Base, tok tokenizer.Tokenizer, dcfg dataset.Config, stdout io.Writer) (*dataset.Set, error) {
	if dcfg.SeqLen == 0 {
		dcfg.SeqLen = min(base.Config.MaxPos, 2048)
	}
	if dcfg.SeqLen > base.Config.MaxPos {
		return nil, fmt.Errorf("--seq-len %d is longer than the base's context of %d tokens", dcfg.SeqLen, base.Config.MaxPos)
	}
	var ds *dataset.Set
	var err error
	if *f.data == "default" {
		ds, err = dataset.Read(ctx, bytes.NewReader(demo.DefaultData(600)), tok, dcfg)
	} else {
		if st, err := os.Stat(*f.data); err == nil && st.Size() >= 4<<20 {
			// A large file takes a while to tokenise: say how far it is.
			bar := newCounter(stdout, "read", "MiB")
			dcfg.Progress = func(done, total int64) { bar.set(int(done>>20), int((total+1<<20-1)>>20)) }
		}
		ds, err = dataset.Load(ctx, *f.data, tok, dcfg)
	}
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "data %s (sequences of at most %d tokens): %s\n", *f.data, dcfg.SeqLen, ds.Report)
	return ds, nil
}

// check refuses values that a library default would silently replace:
// zero means zero on the command line, so a zero that cannot work is an
// error rather than a secret default.
func (f *jobFlags) check() error {
	for _, c := range []struct {
		name string
		v    int
	}{{"steps", *f.steps}, {"batch", *f.batch}, {"width", *f.width}, {"layers", *f.depth}} {
		if c.v < 1 {
			return fmt.Errorf("--%s %d: want at least 1", c.name, c.v)
		}
	}
	if !(*f.lr > 0) {
		return fmt.Errorf("--lr %g: want a positive learning rate", *f.lr)
	}
	if !(*f.gateBias >= -20 && *f.gateBias <= 20) {
		return fmt.Errorf("--gate-bias %g: want a value in [-20, 20]", *f.gateBias)
	}
	if _, err := f.alphas(); err != nil {
		return err
	}
	if *f.seqLen < 0 || *f.seqLen == 1 {
		return fmt.Errorf("--seq-len %d: want 0 (the base's context) or at least 2", *f.seqLen)
	}
	return nil
}

// alphas parses --alpha-grid: comma-separated finite values.
func (f *jobFlags) alphas() ([]float32, error) {
	if strings.TrimSpace(*f.alphaGrid) == "" {
		return nil, nil
	}
	var out []float32
	for _, p := range strings.Split(*f.alphaGrid, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 32)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("--alpha-grid %q: %q is not a finite number", *f.alphaGrid, p)
		}
		out = append(out, float32(v))
	}
	return out, nil
}

// openMix opens the bases of --mix and checks that each reads the token
// ids of tok (the primary base's tokenizer): a mixture feeds one data set
// to every base. The closer closes them.
func (f *jobFlags) openMix(tok tokenizer.Tokenizer) ([]coordinator.MixBase, func(), error) {
	bases, closeAll, err := openMixBases(*f.mix, *f.model, tok, f.openOptions().Load)
	if err != nil {
		return nil, nil, err
	}
	var out []coordinator.MixBase
	for _, b := range bases {
		out = append(out, coordinator.MixBase{Base: b})
	}
	return out, closeAll, nil
}

// addMixFlag is --mix of the commands that run adaptors (generate, eval,
// serve).
func addMixFlag(fs *flag.FlagSet) *string {
	return fs.String("mix", "", `the further bases of adaptors that are mixtures of bases (sources "base:<hash>:final", as 'carryon train --mix' makes them), comma-separated: directories, .gguf files, "default" or "tiny"; each must have --model's tokenizer, and runs its own forward pass beside --model's`)
}

// openMixBases opens the comma-separated bases of list (a --mix flag) and
// checks that each has the tokenizer tok of the base --model primary; opt
// are their load options (--exact-bf16 where the command has it). The
// closer closes them.
func openMixBases(list, primary string, tok tokenizer.Tokenizer, opt model.LoadOptions) ([]*model.Base, func(), error) {
	var out []*model.Base
	closeAll := func() {
		for _, b := range out {
			b.Close()
		}
	}
	for _, spec := range strings.Split(list, ",") {
		if spec = strings.TrimSpace(spec); spec == "" {
			continue
		}
		m, err := openMixBase(spec, primary, tok, opt)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		out = append(out, m.Base)
	}
	return out, closeAll, nil
}

// openMixBase opens spec, a --mix base, and checks that it reads the token
// ids of tok, the tokenizer of --model primary; on an error nothing is
// left open.
func openMixBase(spec, primary string, tok tokenizer.Tokenizer, opt model.LoadOptions) (*model.Opened, error) {
	m, err := model.Open(spec, model.OpenOptions{Load: opt})
	if err != nil {
		return nil, fmt.Errorf("--mix %s: %w", spec, err)
	}
	if err := tokenizer.Same(tok, m.Tokenizer); err != nil {
		m.Base.Close()
		return nil, fmt.Errorf("--mix %s: a mixture needs one vocabulary: its tokenizer is not --model %s's: %w", spec, primary, err)
	}
	return m, nil
}

// config is the coordinator configuration the flags describe.
func (f *jobFlags) config(base *model.Base) coordinator.Config {
	alphas, _ := f.alphas() // checked by check
	cfg := coordinator.Config{CacheDir: *f.cache, Codec: *f.codec,
		Train: coordinator.TrainConfig{Steps: *f.steps, BatchSeqs: *f.batch, KeepBest: *f.keepBest, AlphaGrid: alphas, GateBias: float32(*f.gateBias),
			HeadBF16: *f.headBF16}}
	cfg.Train.Optim.LR = float32(*f.lr)
	cfg.Train.CarryOn = defaultShape(base.Config.Dim, base.Config.Vocab, *f.width, *f.depth, float32(*f.alpha))
	return cfg
}

// defaultShape is a carry-on of the given width and depth on a base of
// width dim, in the default proportions (carryon.Config.WithWidth);
// the coordinator fills in the sources, vocabulary and sequence length.
func defaultShape(dim, vocab, width, layers int, alpha float32) carryon.Config {
	c := carryon.DefaultConfig(dim, vocab).WithWidth(width)
	c.Layers, c.Alpha = layers, alpha
	return c
}
