package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"carryon/dataset"
	"carryon/model"
	"carryon/tensor"
	"carryon/tokenizer"
)

// countingBase counts forward passes (one per sequence).
type countingBase struct {
	b     *model.Base
	calls atomic.Int64
	fail  error
}

func (c *countingBase) Forward(ids []int32, layers []int) ([][]float32, error) {
	c.calls.Add(1)
	if c.fail != nil {
		return nil, c.fail
	}
	return c.b.Forward(ids, layers)
}

func localBase(t *testing.T) *model.Base {
	t.Helper()
	cfg := model.Config{Arch: "qwen2", Dim: 32, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 8, FFN: 48,
		Vocab: 259, MaxPos: 256, RopeTheta: 1e4, NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true,
		BOS: 256, EOS: 257}
	b, err := model.NewRandomBase(cfg, 5)
	if err != nil {
		t.Fatal(err)
	}
	b.WeightsHash = strings.Repeat("ab", 32)
	return b
}

func localData(t *testing.T, n int) *dataset.Set {
	t.Helper()
	var buf bytes.Buffer
	for i := range n {
		fmt.Fprintf(&buf, "{\"question\": \"What is %d plus %d?\", \"answer\": \"%d + %d = %d\\n#### %d\"}\n", i, 2*i, i, 2*i, 3*i, 3*i)
	}
	ds, err := dataset.Read(context.Background(), &buf, tokenizer.ByteTokenizer{}, dataset.Config{SeqLen: 64, SeqsPerChunk: 3, ValPercent: 20})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func localCoordinator(t *testing.T, dir string, b *model.Base, codec string, layers []int) *Coordinator {
	t.Helper()
	cfg := Config{CacheDir: dir, Codec: codec, Layers: layers, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Train: TrainConfig{Steps: 4, BatchSeqs: 2, EvalEvery: 2}}
	c, err := New(nil, nil, b, cfg) // no host: local use
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// collectLocal fills c's cache for ds in this process (CollectLocal).
func collectLocal(t *testing.T, c *Coordinator, ds *dataset.Set) {
	t.Helper()
	if err := c.CollectLocal(context.Background(), ds, nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestCollectLocal(t *testing.T) {
	b := localBase(t)
	ds := localData(t, 20)
	dir := t.TempDir()
	layers := []int{model.FinalLayer, 1}
	seqs := 0
	for _, ch := range ds.All() {
		seqs += len(ch.Seqs)
	}

	cb := &countingBase{b: b}
	c := localCoordinator(t, dir, b, "q4g64", layers)
	var last LocalProgress
	if err := c.CollectLocal(context.Background(), ds, cb, func(p LocalProgress) { last = p }); err != nil {
		t.Fatal(err)
	}
	if got := cb.calls.Load(); got != int64(seqs) {
		t.Errorf("first run: %d forward calls, want one per sequence (%d)", got, seqs)
	}
	if last.Computed != len(ds.All()) || last.Done != last.Total {
		t.Errorf("progress %+v, want all %d chunks computed", last, len(ds.All()))
	}

	// Every cached entry is exactly what a node would have sent: the codec's
	// encoding of the base's hidden states for that layer.
	codec, _ := tensor.ParseCodec("q4g64")
	for _, ch := range ds.All() {
		for i, l := range layers {
			es, err := c.cache.Get(c.key(l, ch))
			if err != nil {
				t.Fatal(err)
			}
			if len(es) != len(ch.Seqs) {
				t.Fatalf("chunk %s layer %d: %d entries, want %d", short(ch.ID), l, len(es), len(ch.Seqs))
			}
			for j, ex := range ch.Seqs {
				hs, err := b.Forward(ex.Tokens, layers)
				if err != nil {
					t.Fatal(err)
				}
				want := codec.Encode(nil, hs[i], len(ex.Tokens), b.Config.Dim)
				if !bytes.Equal(es[j].Data, want) || es[j].Rows != len(ex.Tokens) {
					t.Fatalf("chunk %s layer %d sequence %d: cached bytes differ from the node path's", short(ch.ID), l, j)
				}
			}
		}
	}

	// A second run (a new coordinator on the same cache) computes nothing.
	cb2 := &countingBase{b: b}
	c2 := localCoordinator(t, dir, b, "q4g64", layers)
	if err := c2.CollectLocal(context.Background(), ds, cb2, nil); err != nil {
		t.Fatal(err)
	}
	if got := cb2.calls.Load(); got != 0 {
		t.Errorf("second run: %d forward calls, want 0", got)
	}
	// Training then reads the cache only.
	res, err := c2.Train(context.Background(), ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Steps) != 4 || len(res.Evals) == 0 {
		t.Errorf("trained %d steps with %d evals", len(res.Steps), len(res.Evals))
	}

	// Another codec is another cache key: it is computed again.
	cb3 := &countingBase{b: b}
	if err := localCoordinator(t, dir, b, "q8", layers).CollectLocal(context.Background(), ds, cb3, nil); err != nil {
		t.Fatal(err)
	}
	if got := cb3.calls.Load(); got != int64(seqs) {
		t.Errorf("new codec: %d forward calls, want %d", got, seqs)
	}
}

func TestCollectLocalErrors(t *testing.T) {
	b := localBase(t)
	ds := localData(t, 6)
	c := localCoordinator(t, t.TempDir(), b, "q8", nil)
	boom := errors.New("boom")
	err := c.CollectLocal(context.Background(), ds, &countingBase{b: b, fail: boom}, nil)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "coordinator.CollectLocal") {
		t.Errorf("forward failure: %v", err)
	}
	for _, ch := range ds.All() {
		if c.cached(ch) {
			t.Errorf("chunk %s cached after a failed forward", short(ch.ID))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.CollectLocal(ctx, ds, nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

// TestCollectLocalBatched: with a base that runs batches (model.Base), each
// chunk is one ForwardBatch, and the cache holds exactly what a node, which
// also batches the chunk, would have sent.
func TestCollectLocalBatched(t *testing.T) {
	b := localBase(t)
	ds := localData(t, 12)
	layers := []int{model.FinalLayer, 0}
	c := localCoordinator(t, t.TempDir(), b, "q8", layers)
	var _ BatchForwarder = b
	if err := c.CollectLocal(context.Background(), ds, b, nil); err != nil {
		t.Fatal(err)
	}
	codec, _ := tensor.ParseCodec("q8")
	for _, ch := range ds.All() {
		seqs := ch.TokenSeqs()
		batch, err := b.ForwardBatch(seqs, layers)
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range layers {
			es, err := c.cache.Get(c.key(l, ch))
			if err != nil {
				t.Fatal(err)
			}
			for j := range seqs {
				want := codec.Encode(nil, batch[j][i], len(seqs[j]), b.Config.Dim)
				if !bytes.Equal(es[j].Data, want) {
					t.Fatalf("chunk %s layer %d sequence %d: cached bytes differ from a batched forward", short(ch.ID), l, j)
				}
			}
		}
	}
}
