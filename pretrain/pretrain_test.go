package pretrain

import (
	"carryon/model"
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestPretrainLearnsPattern runs Pretrain end to end on a token stream
// with a learnable structure (each token is the previous one plus one,
// modulo 13, restarting at random points): the validation loss must end
// far below the unigram loss, and a checkpointed run must resume where it
// stopped.
func TestPretrainLearnsPattern(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	stream := func(n int) []int32 {
		s := make([]int32, n)
		for i := range s {
			if i == 0 || rng.IntN(16) == 0 {
				s[i] = int32(rng.IntN(13))
			} else {
				s[i] = (s[i-1] + 1) % 13
			}
		}
		return s
	}
	train, val := stream(4000), stream(600)
	cfg := model.Config{Arch: "qwen2", Dim: 16, Layers: 1, Heads: 2, KVHeads: 1, HeadDim: 8, FFN: 32, Vocab: 13, MaxPos: 32,
		RopeTheta: 1e4, NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true, BOS: -1, EOS: -1}
	o := Options{Config: cfg, Seed: 3, SeqLen: 32, Batch: 4, Steps: 80, Warmup: 5, LR: 1e-2, MinLR: 1e-3,
		WeightDecay: 0.01, ClipNorm: 1, Workers: 2, EvalEvery: 40, CheckpointTo: t.TempDir(), CkptEvery: 20}
	var evals int
	o.Progress = func(p Progress) {
		if !math.IsNaN(p.ValLoss) {
			evals++
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopAt := 30
	o2 := o
	o2.Progress = func(p Progress) {
		if p.Step == stopAt {
			cancel()
		}
	}
	o2.LogEvery = 1
	cut, err := Train(ctx, o2, train, val)
	if err != nil {
		t.Fatal(err)
	}
	if !cut.CutShort || cut.Steps != stopAt {
		t.Fatalf("cancelled run: CutShort %v at step %d, want true at %d", cut.CutShort, cut.Steps, stopAt)
	}
	res, err := Train(context.Background(), o, train, val)
	if err != nil {
		t.Fatal(err)
	}
	if res.ResumedAt != stopAt || res.Steps != o.Steps || res.CutShort {
		t.Errorf("resumed at %d, ended at %d (cut %v), want %d and %d", res.ResumedAt, res.Steps, res.CutShort, stopAt, o.Steps)
	}
	uni := UnigramLoss(train, val, cfg.Vocab)
	if res.ValLoss > uni/2 {
		t.Errorf("val loss %.3f, unigram %.3f: the +1 pattern was not learned", res.ValLoss, uni)
	}
	if evals != 2 { // steps 40 and 80, after resuming at 30
		t.Errorf("%d validation losses reported, want 2", evals)
	}
	t.Logf("val loss %.3f (unigram %.3f)", res.ValLoss, uni)
}

// TestPretrainInit checks continued pretraining with a longer window
// (context extension): Train starts from Init's weights (the loss of its
// first batch is the init model's loss on that batch), the trained config's
// MaxPos is the new window, Init itself is left alone, and an init model of
// another shape is rejected.
func TestPretrainInit(t *testing.T) {
	cfg := model.Config{Arch: "qwen2", Dim: 8, Layers: 2, Heads: 2, KVHeads: 1, HeadDim: 4, FFN: 12, Vocab: 11, MaxPos: 16,
		RopeTheta: 1e4, NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true, BOS: -1, EOS: -1}
	start, err := model.NewRandomBase(cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	model.InitTrainWeights(start, 5)
	before := weightsOf(t, start)
	rng := rand.New(rand.NewPCG(21, 22))
	stream := func(n int) []int32 {
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(rng.IntN(cfg.Vocab))
		}
		return s
	}
	train, val := stream(500), stream(100)
	ext := cfg
	ext.MaxPos = 32
	const seed = 4
	o := Options{Config: ext, Seed: seed, SeqLen: 32, Batch: 3, Steps: 3, Warmup: 1, LR: 1e-2, MinLR: 1e-3,
		WeightDecay: 0.1, ClipNorm: 1, Workers: 2, LogEvery: 1, Init: start}
	first := math.NaN()
	o.Progress = func(p Progress) {
		if p.Step == 1 {
			first = p.TrainLoss
		}
	}
	res, err := Train(context.Background(), o, train, val)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Trainer.Base.Config; got != ext {
		t.Errorf("trained config %+v, want %+v", got, ext)
	}
	// The start model's loss on step 1's batch, drawn as Pretrain draws it.
	br := rand.New(rand.NewPCG(seed, 1))
	seqs := make([][]int32, o.Batch)
	for i := range seqs {
		s := br.IntN(len(train) - o.SeqLen)
		seqs[i] = train[s : s+o.SeqLen+1]
	}
	wide, err := start.WithContext(32, cfg.RopeTheta)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := model.NewBaseTrainer(wide, o.Workers, 32)
	if err != nil {
		t.Fatal(err)
	}
	l, n, err := ref.Loss(seqs)
	if err != nil {
		t.Fatal(err)
	}
	if want := l / float64(n); first != want {
		t.Errorf("step-1 loss %v, want the start model's %v", first, want)
	}
	// WithContext keeps the weights: on windows that fit the start model's
	// context, both score alike, and both match the float64 reference.
	short := [][]int32{train[:17], train[100:117]}
	orig, err := model.NewBaseTrainer(start, 1, 16)
	if err != nil {
		t.Fatal(err)
	}
	l1, _, _ := orig.Loss(short)
	l2, _, _ := ref.Loss(short)
	if math.Abs(l1-l2) > 1e-9*math.Abs(l1) {
		t.Errorf("short-window loss: start %v, extended copy %v", l1, l2)
	}
	for i, w := range weightsOf(t, start) {
		if !slices.Equal(w, before[i]) {
			t.Fatalf("tensor %d: Train modified the start model", i)
		}
	}
	if slices.Equal(res.Trainer.Params()[0], before[0]) {
		t.Errorf("the embeddings did not move in 3 steps")
	}
	// Another shape is rejected.
	bad := ext
	bad.FFN = 16
	o.Config, o.Progress = bad, nil
	if _, err := Train(context.Background(), o, train, val); err == nil || !strings.Contains(err.Error(), "init model") {
		t.Errorf("init model of another FFN width: err %v, want a config mismatch", err)
	}
}

// weightsOf copies b's weights in the trainer's parameter order.
func weightsOf(t *testing.T, b *model.Base) [][]float32 {
	t.Helper()
	tr, err := model.NewBaseTrainer(b, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	return tr.Params()
}
