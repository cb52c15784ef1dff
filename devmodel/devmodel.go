// Package devmodel runs a base model's forward pass on a tensor.Backend:
// the weights are uploaded once (block matrices, embeddings and LM head in
// BF16, or F32 with Options.F32; norms and biases F32) and every op of the
// pass runs on the backend's device, so a GPU (cuda.Backend) computes the
// whole forward and only the requested hidden states come back.
//
// The graph is model.Base's (qwen2, qwen3, llama: RMSNorm, GQA attention
// with rotate-half RoPE, SwiGLU MLP), with the same variable-length batch
// (sequences concatenated, positions restarting, attention causal within
// each sequence). The tests check it against model.Base on the CPU
// backend.
package devmodel

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"carryon/model"
	"carryon/tensor"
)

// Options tune Load.
type Options struct {
	// F32 keeps the matrices in float32 (twice the device memory of BF16;
	// F32 products). The default, BF16, is what GPUs multiply fastest.
	F32 bool
}

// Base is a frozen base model on a backend. Forward and ForwardBatch are
// safe for concurrent use (they serialise: one workspace).
type Base struct {
	Config      model.Config
	WeightsHash string // model.LoadBase's hash of the same files
	numerics    string // Numerics
	rounded     bool   // a weight was rounded to bf16 on upload

	be        tensor.Backend
	embed     tensor.Buf // (Vocab, Dim)
	finalNorm tensor.Buf // (Dim)
	layers    []layer
	bufs      []tensor.Buf // everything Close frees

	mu   sync.Mutex // guards ws, rope and the backend's queue order per call
	ws   *workspace
	rope *tensor.RoPE
}

type layer struct {
	attnNorm, mlpNorm tensor.Buf // (Dim)
	wq, wk, wv, wo    tensor.Buf // (Heads·hd, Dim), (KV·hd, Dim) ×2, (Dim, Heads·hd)
	bq, bk, bv        tensor.Buf // biases or nil
	qNorm, kNorm      tensor.Buf // (hd) or nil
	gate, up, down    tensor.Buf // (FFN, Dim) ×2, (Dim, FFN)
}

// Load opens a Hugging Face checkpoint directory (config.json and
// model.safetensors or an index of shards, F32/F16/BF16) and uploads its
// weights to be. The config and WeightsHash come from model.LoadBase, so a
// node serving the result advertises the same base as a CPU node would.
func Load(be tensor.Backend, dir string, opt Options) (*Base, error) {
	mb, err := model.LoadBase(dir)
	if err != nil {
		return nil, fmt.Errorf("devmodel.Load: %w", err)
	}
	cfg, hash := mb.Config, mb.WeightsHash
	mb.Close()
	files, err := shardFiles(dir)
	if err != nil {
		return nil, fmt.Errorf("devmodel.Load: %w", err)
	}
	views := map[string]tensor.View{}
	for _, f := range files {
		st, err := tensor.OpenSafetensors(f)
		if err != nil {
			return nil, fmt.Errorf("devmodel.Load: %w", err)
		}
		defer st.Close()
		for _, n := range st.Names() {
			views[n], _ = st.Get(n)
		}
	}
	b, err := upload(be, cfg, func(name string) (tensor.View, bool) { v, ok := views[name]; return v, ok }, opt)
	if err != nil {
		return nil, fmt.Errorf("devmodel.Load: %s: %w", dir, err)
	}
	b.WeightsHash = hash
	switch {
	case opt.F32:
	case b.rounded:
		b.numerics = NumericsBF16Weights
	default:
		b.numerics = model.NumericsBF16
	}
	return b, nil
}

// NumericsBF16Weights is Base.Numerics for matrices that were not stored
// in bf16 but were rounded to it on upload (the default for an F32 or F16
// checkpoint): no CPU base computes that, so such a node serves only
// coordinators whose base has the same numerics, never the CPU's exact
// float32 jobs (use Options.F32 for those).
const NumericsBF16Weights = "bf16-weights"

// Numerics is model.Base.Numerics for the device forward: "" with
// Options.F32 (float32 products, cuBLAS without TF32); by default the
// matrices are bf16 and the GEMMs round the activations to bf16 and add
// exact products in float32 (cuBLAS GemmEx, CUBLAS_COMPUTE_32F), which for a
// BF16 checkpoint is model.NumericsBF16, what CPU nodes compute for it by
// default (within summation order; tensor core accumulation is not checked
// here: no GPU has run it), and NumericsBF16Weights otherwise.
func (b *Base) Numerics() string { return b.numerics }

// EmbedHash is model.Base.EmbedHash: the base's name for embedding jobs.
func (b *Base) EmbedHash() string { return model.EmbedHashOf(b.WeightsHash, b.numerics) }

// shardFiles lists the safetensors files of dir in a stable order.
func shardFiles(dir string) ([]string, error) {
	single := filepath.Join(dir, "model.safetensors")
	if _, err := os.Stat(single); err == nil {
		return []string{single}, nil
	}
	data, err := os.ReadFile(filepath.Join(dir, "model.safetensors.index.json"))
	if err != nil {
		return nil, fmt.Errorf("no model.safetensors or index: %w", err)
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("model.safetensors.index.json: %w", err)
	}
	var files []string
	for _, f := range idx.WeightMap {
		if f != filepath.Base(f) {
			return nil, fmt.Errorf("index names %q outside the directory", f)
		}
		p := filepath.Join(dir, f)
		if !slices.Contains(files, p) {
			files = append(files, p)
		}
	}
	slices.Sort(files)
	return files, nil
}

// upload copies every weight to the backend (names as in HF checkpoints).
func upload(be tensor.Backend, c model.Config, get func(string) (tensor.View, bool), opt Options) (*Base, error) {
	b := &Base{Config: c, be: be}
	D, qd, kvd, hd := c.Dim, c.Heads*c.HeadDim, c.KVHeads*c.HeadDim, c.HeadDim
	fail := func(err error) (*Base, error) { b.Close(); return nil, err }
	mat := func(name string, shape ...int) (tensor.Buf, error) { return b.tensor(get, name, !opt.F32, shape...) }
	vec := func(name string, n int) (tensor.Buf, error) { return b.tensor(get, name, false, n) }
	var err error
	if b.embed, err = mat("model.embed_tokens.weight", c.Vocab, D); err != nil {
		return fail(err)
	}
	if b.finalNorm, err = vec("model.norm.weight", D); err != nil {
		return fail(err)
	}
	b.layers = make([]layer, c.Layers)
	for i := range b.layers {
		p := "model.layers." + strconv.Itoa(i) + "."
		l := &b.layers[i]
		steps := []wspec{
			{&l.attnNorm, "input_layernorm.weight", []int{D}, false},
			{&l.wq, "self_attn.q_proj.weight", []int{qd, D}, true},
			{&l.wk, "self_attn.k_proj.weight", []int{kvd, D}, true},
			{&l.wv, "self_attn.v_proj.weight", []int{kvd, D}, true},
			{&l.wo, "self_attn.o_proj.weight", []int{D, qd}, true},
			{&l.mlpNorm, "post_attention_layernorm.weight", []int{D}, false},
			{&l.gate, "mlp.gate_proj.weight", []int{c.FFN, D}, true},
			{&l.up, "mlp.up_proj.weight", []int{c.FFN, D}, true},
			{&l.down, "mlp.down_proj.weight", []int{D, c.FFN}, true},
		}
		if c.QKVBias {
			steps = append(steps, wspec{&l.bq, "self_attn.q_proj.bias", []int{qd}, false}, wspec{&l.bk, "self_attn.k_proj.bias", []int{kvd}, false}, wspec{&l.bv, "self_attn.v_proj.bias", []int{kvd}, false})
		}
		if c.QKNorm {
			steps = append(steps, wspec{&l.qNorm, "self_attn.q_norm.weight", []int{hd}, false}, wspec{&l.kNorm, "self_attn.k_norm.weight", []int{hd}, false})
		}
		for _, s := range steps {
			if *s.dst, err = b.tensor(get, p+s.name, s.isMat && !opt.F32, s.shape...); err != nil {
				return fail(err)
			}
		}
	}
	return b, be.Sync()
}

// wspec names one weight of a layer and where it goes.
type wspec struct {
	dst   *tensor.Buf
	name  string
	shape []int
	isMat bool
}

// tensor uploads one weight, as BF16 (rounded to nearest even) or F32.
func (b *Base) tensor(get func(string) (tensor.View, bool), name string, bf16 bool, shape ...int) (tensor.Buf, error) {
	v, ok := get(name)
	if !ok {
		return nil, fmt.Errorf("tensor %s missing", name)
	}
	if !slices.Equal(v.Shape, shape) {
		return nil, fmt.Errorf("tensor %s has shape %v, want %v", name, v.Shape, shape)
	}
	f, err := v.Float32()
	if err != nil {
		return nil, err
	}
	dt := tensor.F32
	if bf16 {
		dt = tensor.BF16
		b.rounded = b.rounded || v.DType != tensor.BF16
	}
	buf, err := b.be.Alloc(dt, len(f))
	if err != nil {
		return nil, fmt.Errorf("tensor %s: %w", name, err)
	}
	b.bufs = append(b.bufs, buf)
	if !bf16 {
		b.be.UploadF32(buf, f)
		return buf, nil
	}
	h := make([]uint16, len(f))
	for i, x := range f {
		h[i] = tensor.F32ToBF16(x)
	}
	b.be.UploadBF16(buf, h)
	return buf, nil
}

// Close frees the device memory of the weights and the workspace.
func (b *Base) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, x := range b.bufs {
		b.be.Free(x)
	}
	b.bufs = nil
	if b.ws != nil {
		b.ws.free(b.be)
		b.ws = nil
	}
	return nil
}

// ErrClosed is returned by Forward after Close.
var ErrClosed = errors.New("devmodel: base is closed")
