package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"carryon/carryon"
	"carryon/model"
	"carryon/node"
)

// mixTestBase is a second base for a mixture: the swarm base's vocabulary
// and context, another width and depth, its own weights hash.
func mixTestBase(t testing.TB, vocab int) *model.Base {
	t.Helper()
	cfg := swarmModelConfig()
	cfg.Dim, cfg.Layers, cfg.HeadDim, cfg.FFN, cfg.Vocab = 96, 1, 48, 48, vocab
	b, err := model.NewRandomBase(cfg, 11)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte("carryon coordinator mixed base"))
	b.WeightsHash = hex.EncodeToString(h[:])
	return b
}

// countedBase counts a node's forward calls.
type countedBase struct {
	node.Base
	calls atomic.Int64
}

func (c *countedBase) Forward(ids []int32, layers []int) ([][]float32, error) {
	c.calls.Add(1)
	return c.Base.Forward(ids, layers)
}

// TestMixTwoBases wires a mixture of two bases end to end: one node serves
// the coordinator's base, another a second base of another width; the
// coordinator collects both jobs over the swarm (each node computes only
// its base's sources, the second base through its own bridge codec), and
// the carry-on trains on the primary base's final and layer-0 states and
// the second base's final state, each through its own projection. The
// result equals a training on the same mixture collected in-process
// (CollectLocal), bit for bit.
func TestMixTwoBases(t *testing.T) {
	ts := newTestSwarm(t)
	b2 := mixTestBase(t, ts.base.Config.Vocab)
	na := &countedBase{Base: node.Serve(ts.base, "a")}
	nb := &countedBase{Base: node.Serve(b2, "b")}
	ts.addNode(na, node.Config{})
	ts.addNode(nb, node.Config{})
	tc := TrainConfig{Steps: 6, BatchSeqs: 2, EvalEvery: 3, CheckpointEvery: -1, Optim: carryon.OptimConfig{LR: 1e-2}}
	tc.CarryOn = carryon.DefaultConfig(ts.base.Config.Dim, ts.base.Config.Vocab).WithWidth(16)
	tc.CarryOn.Layers = 1
	cfg := Config{VerifyFraction: -1, Layers: []int{model.FinalLayer, 0},
		Mix: []MixBase{{Base: b2, Codec: "q4"}}, Train: tc}
	c, _ := ts.coordinator(cfg)
	ds := swarmDataset(3, 8, 2, 12)
	ds.Val, ds.Train = ds.Train[6:], ds.Train[:6]
	collect(t, c, ds)
	if na.calls.Load() == 0 || nb.calls.Load() == 0 {
		t.Fatalf("forward calls: %d on the primary base's node, %d on the mixed base's: each must compute its own", na.calls.Load(), nb.calls.Load())
	}
	// The mixed base's frames: its width, its codec, its hidden states.
	mj := c.mixJobs()[0]
	for _, ch := range ds.All() {
		got, err := c.cache.Get(mj.key(model.FinalLayer, ch))
		if err != nil {
			t.Fatalf("chunk %s of the mixed base: %v", short(ch.ID), err)
		}
		want, _, err := computeChunk(mj, b2, ch)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := compareEntries(mj.Codec, c.cfg.VerifyKernelRel, want, [][]Entry{got}); err != nil || !st.agree() {
			t.Fatalf("chunk %s: the mixed base's cached states differ from its forward pass: %v %v", short(ch.ID), st, err)
		}
		if got[0].Dim != 96 || len(got[0].Data) != mj.Codec.EncodedSize(got[0].Rows, 96) || mj.Codec.String() != "q4" {
			t.Fatalf("chunk %s: mixed frame of width %d, %d bytes, codec %s; want width 96 at q4", short(ch.ID), got[0].Dim, len(got[0].Data), mj.Codec)
		}
	}
	res, err := c.Train(context.Background(), ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	src := res.CarryOn.Config.Sources
	want := []carryon.Source{{Name: "final", Dim: 128}, {Name: "layer:0", Dim: 128}, {Name: "base:" + short(b2.WeightsHash) + ":final", Dim: 96}}
	if !slices.Equal(src, want) {
		t.Fatalf("sources %v, want %v", src, want)
	}
	// The mixed source's projection learnt (it gets a gradient once W_Δ ≠ 0).
	init, err := carryon.New(res.CarryOn.Config, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, ten := range res.CarryOn.Tensors() {
		if ten.Name == "src.2.proj.weight" && slices.Equal(init.Params[ten.Offset:ten.Offset+ten.Numel()], res.CarryOn.Params[ten.Offset:ten.Offset+ten.Numel()]) {
			t.Fatal("the mixed base's projection did not change in training")
		}
	}

	// The same mixture collected in-process trains to the same carry-on.
	cfg.CacheDir, cfg.Logger = t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil))
	local, err := New(nil, nil, ts.base, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	if err := local.CollectLocal(context.Background(), ds, nil, nil); err != nil {
		t.Fatal(err)
	}
	if cached, total := local.CacheStatus(ds); cached != total {
		t.Fatalf("after CollectLocal %d of %d chunks cached (every base's layers)", cached, total)
	}
	res2, err := local.Train(context.Background(), ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if i := sameBits(res.CarryOn.Params, res2.CarryOn.Params); i >= 0 {
		t.Fatalf("swarm-collected and in-process mixtures trained to different carry-ons (parameter %d of %d differs)", i, len(res.CarryOn.Params))
	}
}

// TestMixRefused: a mixture needs one vocabulary, a base other than the
// coordinator's own, and layers the mixed base has.
func TestMixRefused(t *testing.T) {
	base := swarmTestBase(t)
	for _, c := range []struct {
		mix  MixBase
		want string
	}{
		{MixBase{Base: mixTestBase(t, 300)}, "vocabulary of 300 tokens, this job's base 259"},
		{MixBase{Base: base}, "coordinator's own base"},
		{MixBase{Base: mixTestBase(t, 259), Layers: []int{model.FinalLayer, 2}}, "layer 2 beyond the base's 1 layers"},
		{MixBase{}, "Mix[0].Base: required"},
		{MixBase{Base: mixTestBase(t, 259), Codec: "q9"}, "Mix[0].Codec"},
	} {
		cfg := Config{CacheDir: t.TempDir(), Mix: []MixBase{c.mix}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		co, err := New(nil, nil, base, cfg)
		if err == nil {
			co.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New with %+v: %v, want an error saying %q", c.mix, err, c.want)
		}
	}
}

// TestMixInference: a mixture trained on the cache (the primary base's
// final and layer-0 states, the second base's final and layer-1 states,
// all through the q8 bridge) computes at inference, where each base runs
// its own forward pass (carryon.ForwardStages with the second base given),
// what training saw: the carry-on's output on every validation sequence
// equals its forward on the cached sources, and the answer-token loss over
// the validation split equals Evaluate's on the cache.
func TestMixInference(t *testing.T) {
	b := localBase(t)
	b2 := mixTestBase(t, b.Config.Vocab)
	ds := localData(t, 30)
	c := localCoordinator(t, t.TempDir(), b, "q8", []int{model.FinalLayer, 0})
	c.cfg.Mix = []MixBase{{Base: b2, Layers: []int{model.FinalLayer, 1}, Codec: "q8"}}
	c.cfg.Train.Steps, c.cfg.Train.EvalEvery, c.cfg.Train.CheckpointEvery = 30, 30, -1
	c.cfg.Train.Optim.LR, c.cfg.Train.Optim.MinLR = 3e-3, 3e-4
	ctx := context.Background()
	collectLocal(t, c, ds)
	res, err := c.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	co := res.CarryOn
	h := short(b2.WeightsHash)
	want := []carryon.Source{{Name: "final", Dim: 32}, {Name: "layer:0", Dim: 32}, {Name: "base:" + h + ":final", Dim: 96}, {Name: "base:" + h + ":layer:1", Dim: 96}}
	if !slices.Equal(co.Config.Sources, want) {
		t.Fatalf("sources %v, want %v", co.Config.Sources, want)
	}
	ev, err := c.Evaluate(ds, co)
	if err != nil {
		t.Fatal(err)
	}
	if !(ev.Loss < ev.BaseLoss) {
		t.Fatalf("the mixture did not learn: loss %.5f, base %.5f", ev.Loss, ev.BaseLoss)
	}
	val, err := c.loadSplit(ds.Val)
	if err != nil {
		t.Fatal(err)
	}
	alpha := co.Config.Alpha
	d := &decoder{c: c}
	var sum float64
	n, k := 0, 0
	for _, ch := range ds.Val {
		for _, ex := range ch.Seqs {
			ids, targets := ex.Tokens, ex.Targets()
			T := len(ids)
			_, y, err := carryon.ForwardStages(b, []*carryon.Model{co}, alpha, ids, "q8", b2)
			if err != nil {
				t.Fatal(err)
			}
			if k < len(val) && slices.Equal(val[k].targets, targets) {
				src, err := d.sources(val[k])
				if err != nil {
					t.Fatal(err)
				}
				cached := co.Forward(co.NewWorkspace(T), src, T, alpha)
				for i := range cached {
					if math.Abs(float64(cached[i]-y[i])) > 1e-4*(1+math.Abs(float64(cached[i]))) {
						t.Fatalf("sequence %d, y[%d]: inference %v, on the cache %v", k, i, y[i], cached[i])
					}
				}
				k++
			}
			logits := b.Logits(y, T)
			V := b.Config.Vocab
			for p, tg := range targets {
				if tg >= 0 {
					sum += xent(logits[p*V:(p+1)*V], tg)
					n++
				}
			}
		}
	}
	if k != len(val) || n != ev.Tokens {
		t.Fatalf("compared %d of %d cached sequences, %d of %d scored tokens", k, len(val), n, ev.Tokens)
	}
	if got := sum / float64(n); math.Abs(got-ev.Loss) > 1e-4*ev.Loss {
		t.Errorf("validation loss through inference %.6f, on the cache (Evaluate) %.6f", got, ev.Loss)
	} else {
		t.Logf("validation loss through inference %.6f, on the cache %.6f (base %.6f)", got, ev.Loss, ev.BaseLoss)
	}
	// Without the second base, inference refuses the adaptor and says which base it needs.
	if _, _, err := carryon.ForwardStages(b, []*carryon.Model{co}, alpha, ds.Val[0].Seqs[0].Tokens, "q8"); err == nil || !strings.Contains(err.Error(), "reads base "+h) {
		t.Errorf("inference without the second base: %v, want a refusal naming base %s", err, h)
	}
}

// xent is -log softmax(logits)[target], in float64.
func xent(logits []float32, target int32) float64 {
	m := math.Inf(-1)
	for _, v := range logits {
		m = max(m, float64(v))
	}
	var z float64
	for _, v := range logits {
		z += math.Exp(float64(v) - m)
	}
	return m + math.Log(z) - float64(logits[target])
}
