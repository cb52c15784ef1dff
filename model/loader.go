package model

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"carryon/internal/atomicfile"
	"carryon/internal/capread"
	"carryon/tensor"
)

// Weight files of a Hugging Face checkpoint directory.
const (
	configFile    = "config.json"
	singleFile    = "model.safetensors"
	indexFile     = "model.safetensors.index.json"
	maxIndexBytes = 64 << 20
	maxShards     = 1 << 12
)

// LoadOptions tune LoadBaseWith. The zero value is LoadBase's behaviour.
type LoadOptions struct {
	// ExactBF16 multiplies the BF16 weight matrices of the transformer
	// blocks exactly: they stay memory-mapped and tensor.GemmQuant widens
	// them inside each product, with the float32 activations as they are
	// (the numerics of earlier versions, Base.Numerics ""). By default
	// (ExactBF16 false) they have carryon's one bf16 numerics
	// (tensor.GemmBF16, Base.Numerics NumericsBF16): the activations are
	// rounded to bf16 (nearest even) before each product, the products of
	// bf16 pairs are exact and added in float32, as llama.cpp does for
	// BF16, on every CPU and for every row count (decode included), so
	// that results differ between CPUs only by float32 summation order
	// (tensor's TestGemmBF16PathsAgree). Where the CPU has AVX512_BF16, AVX2
	// or AVX-512 F the matrices are packed once, before the first forward
	// pass (tensor.PackBBF16Bits: values kept exactly, read from the mapped
	// file into memory outside the Go heap, whose pages are then released):
	// for the native kernel, about twice as fast in prefill, or for the
	// float32 kernel that widens the bf16 panels as it reads them, bit for
	// bit tensor.GemmBF16's products there; elsewhere they stay
	// memory-mapped and go through tensor.GemmBF16. Hidden states
	// differ from the exact path's by about 1e-3 to 1e-2 relative and come
	// 2.5–200x closer to llama.cpp's BF16 results (TestOracleGGUF), so the
	// swarm names the two apart (Base.EmbedHash). Embeddings, the LM head,
	// norms and biases stay exact float32 either way. Open sets ExactBF16
	// for the embedded bases, whose hidden states (and the demo's adaptor)
	// are those of the exact path; Widen implies it.
	ExactBF16 bool
	// Widen expands F16, BF16 and quantized (GGUF Q8_0, Q4_K, Q6_K)
	// weights to float32 at load, as earlier versions did. By default the
	// block matrices, the embeddings and an untied LM head stay in their
	// stored format, memory-mapped, and are multiplied with
	// tensor.GemmQuant, which widens them exactly inside the product; the
	// results are the same up to float32 summation order.
	Widen bool
	// Int8 multiplies Q8_0 block matrices and a Q8_0 LM head with int8
	// products: the activations are rounded to int8 per block of 32 (as
	// llama.cpp does) and the products are int8 dot products. Where the
	// CPU has AVX512_VNNI the weights are repacked once, before the first
	// forward pass, for tensor.GemmQ8Packed (the mapped originals' pages
	// are released); elsewhere tensor.GemmQ8 reads them as stored
	// (AVX-VNNI, AVX2 or Go). Decode (one row) reads each weight byte
	// once. Hidden states then move by about 1e-2 relative from the exact
	// path, like llama.cpp's own Q8_0 results. Other types and the
	// embeddings are unchanged.
	Int8 bool
}

// LoadBase opens a Hugging Face checkpoint directory: config.json and
// either model.safetensors or shards listed by model.safetensors.index.json.
// Weights stay memory-mapped (zero copy) in their stored format (F32, F16,
// BF16; see LoadOptions). Errors name the tensor and what was expected.
func LoadBase(dir string) (*Base, error) { return LoadBaseWith(dir, LoadOptions{}) }

// LoadBaseWith is LoadBase with options.
func LoadBaseWith(dir string, opt LoadOptions) (*Base, error) {
	cfgData, err := capread.ReadFile(filepath.Join(dir, configFile), MaxConfigBytes)
	if err != nil {
		return nil, fmt.Errorf("open model %s: %w", dir, err)
	}
	cfg, err := ParseConfig(cfgData)
	if err != nil {
		return nil, fmt.Errorf("open model %s: %s: %w", dir, configFile, err)
	}
	files, index, err := weightFiles(dir)
	if err != nil {
		return nil, fmt.Errorf("open model %s: %w", dir, err)
	}
	b := &Base{Config: cfg}
	ws := make(weightSet)
	h := sha256.New()
	for _, name := range files {
		st, err := tensor.OpenSafetensors(filepath.Join(dir, name))
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("open model %s: %w", dir, err)
		}
		b.closers = append(b.closers, st.Close)
		if err := hashFile(h, filepath.Join(dir, name)); err != nil {
			b.Close()
			return nil, fmt.Errorf("open model %s: %w", dir, err)
		}
		for _, tn := range st.Names() {
			if want, ok := index[tn]; ok && want != name {
				b.Close()
				return nil, fmt.Errorf("open model %s: tensor %q is in %s but the index says %s", dir, tn, name, want)
			}
			if prev, dup := ws[tn]; dup {
				b.Close()
				return nil, fmt.Errorf("open model %s: tensor %q is in both %s and %s", dir, tn, prev.file, name)
			}
			v, _ := st.Get(tn)
			ws[tn] = &weightEntry{view: v, file: name}
		}
	}
	for tn, file := range index {
		if _, ok := ws[tn]; !ok {
			b.Close()
			return nil, fmt.Errorf("open model %s: tensor %q is listed in %s (file %s) but missing from it", dir, tn, indexFile, file)
		}
	}
	b.WeightsHash = hex.EncodeToString(h.Sum(nil))
	if err := b.bind(ws, opt); err != nil {
		b.Close()
		return nil, fmt.Errorf("open model %s: %w", dir, err)
	}
	return b, nil
}

// weightFiles lists the safetensors files of dir in sorted order, with the
// index's tensor → file map when the checkpoint is sharded.
func weightFiles(dir string) ([]string, map[string]string, error) {
	idxPath := filepath.Join(dir, indexFile)
	data, err := capread.ReadFile(idxPath, maxIndexBytes)
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dir, singleFile)); err != nil {
			return nil, nil, fmt.Errorf("no %s or %s in %s: %w", singleFile, indexFile, dir, err)
		}
		return []string{singleFile}, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", idxPath, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, nil, fmt.Errorf("%s: empty weight_map", idxPath)
	}
	var files []string
	for tn, f := range idx.WeightMap {
		if f == "" || f != filepath.Base(f) || strings.HasPrefix(f, ".") || !strings.HasSuffix(f, ".safetensors") {
			return nil, nil, fmt.Errorf("%s: tensor %q maps to file %q: want a .safetensors file name in the same directory", idxPath, tn, f)
		}
		if !slices.Contains(files, f) {
			files = append(files, f)
			if len(files) > maxShards {
				return nil, nil, fmt.Errorf("%s: more than %d shards", idxPath, maxShards)
			}
		}
	}
	slices.Sort(files)
	return files, idx.WeightMap, nil
}

func hashFile(h io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("hash %s: %w", path, err)
	}
	return nil
}

type weightEntry struct {
	view tensor.View // F32, F16 or BF16 data; for a ggml block type only Name and Shape
	file string
	used bool
	// gtype is the storage type of a tensor in a ggml block format (GGUF
	// Q8_0, Q4_K, Q6_K), whose bytes are raw; zero (F32) otherwise.
	gtype tensor.GGMLType
	raw   []byte
}

// float32 decodes the tensor.
func (e *weightEntry) float32() ([]float32, error) {
	if e.raw == nil {
		return e.view.Float32()
	}
	f := make([]float32, e.view.Numel())
	if err := tensor.DequantizeGGML(f, e.raw, e.gtype); err != nil {
		return nil, err
	}
	return f, nil
}

// quant returns the tensor as a tensor.QuantMatrix (rows, cols) when it is
// stored as F16, BF16 or a ggml block type; ok is false for F32 or another
// shape.
func (e *weightEntry) quant(rows, cols int) (q *tensor.QuantMatrix, ok bool, err error) {
	if !slices.Equal(e.view.Shape, []int{rows, cols}) {
		return nil, false, nil
	}
	t, data := e.gtype, e.raw
	if data == nil {
		switch e.view.DType {
		case tensor.F16:
			t = tensor.GGMLF16
		case tensor.BF16:
			t = tensor.GGMLBF16
		default:
			return nil, false, nil
		}
		data = e.view.Data
	}
	m, err := tensor.NewQuantMatrix(t, rows, cols, data)
	if err != nil {
		return nil, false, fmt.Errorf("tensor %q (in %s): %w", e.view.Name, e.file, err)
	}
	return &m, true, nil
}

// weightSet is every tensor of a checkpoint by HF name.
type weightSet map[string]*weightEntry

// take returns the named tensor as float32 after checking its shape.
func (ws weightSet) take(name string, shape ...int) ([]float32, error) {
	e, ok := ws[name]
	if !ok {
		return nil, fmt.Errorf("tensor %q is missing (want shape %v)", name, shape)
	}
	if !slices.Equal(e.view.Shape, shape) {
		return nil, fmt.Errorf("tensor %q (in %s) has shape %v, want %v", name, e.file, e.view.Shape, shape)
	}
	if e.raw == nil && e.view.DType != tensor.F32 && e.view.DType != tensor.F16 && e.view.DType != tensor.BF16 {
		return nil, fmt.Errorf("tensor %q (in %s) has dtype %s, want F32, F16 or BF16", name, e.file, e.view.DType)
	}
	e.used = true
	return e.float32()
}

// bind resolves every tensor the config asks for and rejects unknown ones.
func (b *Base) bind(ws weightSet, opt LoadOptions) error {
	c := b.Config
	D, qd, kvd, hd := c.Dim, c.Heads*c.HeadDim, c.KVHeads*c.HeadDim, c.HeadDim
	var err error
	get := func(name string, shape ...int) []float32 {
		if err != nil {
			return nil
		}
		var w []float32
		w, err = ws.take(name, shape...)
		return w
	}
	// stored returns the named (rows, cols) tensor in its stored format
	// when that is not F32 (and Widen is off).
	stored := func(name string, rows, cols int) *tensor.QuantMatrix {
		e, ok := ws[name]
		if err != nil || !ok || opt.Widen {
			return nil
		}
		q, ok, qerr := e.quant(rows, cols)
		if qerr != nil {
			err = qerr
		}
		if !ok || qerr != nil {
			return nil
		}
		e.used = true
		return q
	}
	mat := func(name string, shape ...int) matrix {
		if err != nil {
			return matrix{}
		}
		if e, ok := ws[name]; ok && !opt.ExactBF16 && !opt.Widen && e.raw == nil && e.view.DType == tensor.BF16 && slices.Equal(e.view.Shape, shape) {
			e.used = true
			b.numerics = NumericsBF16
			return matrix{h: bf16Bits(e.view.Data)}
		}
		if q := stored(name, shape[0], shape[1]); q != nil {
			return matrix{q: q, int8: opt.Int8 && q.Type == tensor.GGMLQ8_0}
		}
		return f32Matrix(get(name, shape...))
	}
	if b.embedQ = stored("model.embed_tokens.weight", c.Vocab, D); b.embedQ == nil {
		b.embed = get("model.embed_tokens.weight", c.Vocab, D)
	}
	b.finalNorm = get("model.norm.weight", D)
	if c.TiedEmbeddings {
		b.lmHead, b.headQ = b.embed, b.embedQ
		if e, ok := ws["lm_head.weight"]; ok {
			e.used = true // a stray copy in a tied checkpoint: HF ties it, so ignore it
		}
	} else if b.headQ = stored("lm_head.weight", c.Vocab, D); b.headQ == nil {
		b.lmHead = get("lm_head.weight", c.Vocab, D)
	}
	b.int8Head = opt.Int8 && b.headQ != nil && b.headQ.Type == tensor.GGMLQ8_0
	b.layers = make([]layerWeights, c.Layers)
	for i := range b.layers {
		p := "model.layers." + strconv.Itoa(i) + "."
		w := &b.layers[i]
		w.attnNorm = get(p+"input_layernorm.weight", D)
		w.wq = mat(p+"self_attn.q_proj.weight", qd, D)
		w.wk = mat(p+"self_attn.k_proj.weight", kvd, D)
		w.wv = mat(p+"self_attn.v_proj.weight", kvd, D)
		if c.QKVBias {
			w.bq = get(p+"self_attn.q_proj.bias", qd)
			w.bk = get(p+"self_attn.k_proj.bias", kvd)
			w.bv = get(p+"self_attn.v_proj.bias", kvd)
		}
		w.wo = mat(p+"self_attn.o_proj.weight", D, qd)
		if c.QKNorm {
			w.qNorm = get(p+"self_attn.q_norm.weight", hd)
			w.kNorm = get(p+"self_attn.k_norm.weight", hd)
		}
		w.mlpNorm = get(p+"post_attention_layernorm.weight", D)
		w.gate = mat(p+"mlp.gate_proj.weight", c.FFN, D)
		w.up = mat(p+"mlp.up_proj.weight", c.FFN, D)
		w.down = mat(p+"mlp.down_proj.weight", D, c.FFN)
	}
	if err != nil {
		return err
	}
	var unknown []string
	for name, e := range ws {
		if !e.used && !strings.HasSuffix(name, ".rotary_emb.inv_freq") {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("unexpected tensor %q (%d unexpected in all) for a %s config (QKVBias %v, QKNorm %v, tied %v)",
			unknown[0], len(unknown), c.Arch, c.QKVBias, c.QKNorm, c.TiedEmbeddings)
	}
	return nil
}

// tensors lists every weight of b under its HF name, in the order
// make-random-hf.py draws them (embedding, per-layer, final norm, head).
func (b *Base) tensors() []namedTensor {
	c := b.Config
	D, qd, kvd, hd := c.Dim, c.Heads*c.HeadDim, c.KVHeads*c.HeadDim, c.HeadDim
	ts := []namedTensor{{"model.embed_tokens.weight", b.Embeddings(), []int{c.Vocab, D}, kindMatrix}}
	for i, w := range b.layers {
		p := "model.layers." + strconv.Itoa(i) + "."
		ts = append(ts,
			namedTensor{p + "input_layernorm.weight", w.attnNorm, []int{D}, kindNorm},
			namedTensor{p + "self_attn.q_proj.weight", w.wq.float32(), []int{qd, D}, kindMatrix},
			namedTensor{p + "self_attn.k_proj.weight", w.wk.float32(), []int{kvd, D}, kindMatrix},
			namedTensor{p + "self_attn.v_proj.weight", w.wv.float32(), []int{kvd, D}, kindMatrix})
		if c.QKVBias {
			ts = append(ts,
				namedTensor{p + "self_attn.q_proj.bias", w.bq, []int{qd}, kindBias},
				namedTensor{p + "self_attn.k_proj.bias", w.bk, []int{kvd}, kindBias},
				namedTensor{p + "self_attn.v_proj.bias", w.bv, []int{kvd}, kindBias})
		}
		ts = append(ts, namedTensor{p + "self_attn.o_proj.weight", w.wo.float32(), []int{D, qd}, kindMatrix})
		if c.QKNorm {
			ts = append(ts,
				namedTensor{p + "self_attn.q_norm.weight", w.qNorm, []int{hd}, kindNorm},
				namedTensor{p + "self_attn.k_norm.weight", w.kNorm, []int{hd}, kindNorm})
		}
		ts = append(ts,
			namedTensor{p + "post_attention_layernorm.weight", w.mlpNorm, []int{D}, kindNorm},
			namedTensor{p + "mlp.gate_proj.weight", w.gate.float32(), []int{c.FFN, D}, kindMatrix},
			namedTensor{p + "mlp.up_proj.weight", w.up.float32(), []int{c.FFN, D}, kindMatrix},
			namedTensor{p + "mlp.down_proj.weight", w.down.float32(), []int{D, c.FFN}, kindMatrix})
	}
	ts = append(ts, namedTensor{"model.norm.weight", b.finalNorm, []int{D}, kindNorm})
	if !c.TiedEmbeddings {
		ts = append(ts, namedTensor{"lm_head.weight", b.LMHead(), []int{c.Vocab, D}, kindMatrix})
	}
	return ts
}

// bf16Bits views little-endian bf16 data as bit patterns: zero-copy when
// aligned on a little-endian machine, else a copy.
func bf16Bits(data []byte) []uint16 {
	n := len(data) / 2
	if n == 0 {
		return nil
	}
	if uintptr(unsafe.Pointer(&data[0]))%2 == 0 && littleEndian {
		return unsafe.Slice((*uint16)(unsafe.Pointer(&data[0])), n)
	}
	out := make([]uint16, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(data[2*i:])
	}
	return out
}

var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

type tensorKind int

const (
	kindMatrix tensorKind = iota // N(0, 1/fan_in) at random init
	kindNorm                     // 1 + 0.1·N(0, 1)
	kindBias                     // 0.1·N(0, 1)
)

type namedTensor struct {
	name  string
	data  []float32
	shape []int
	kind  tensorKind
}

// SaveHF writes b as a Hugging Face checkpoint into dir (created if
// needed): config.json and one F32 model.safetensors, readable by LoadBase
// and by Hugging Face / llama.cpp's converters. The file is written to a
// temporary name and renamed.
func (b *Base) SaveHF(dir string) error { return b.saveHF(dir, "model.SaveHF", tensor.F32View) }

// saveHF writes the checkpoint of SaveHF with each tensor stored as view
// makes it; errors name the operation op.
func (b *Base) saveHF(dir, op string, view func(name string, data []float32, shape ...int) tensor.View) error {
	release, err := b.use(op)
	if err != nil {
		return err
	}
	defer release()
	b.ready()
	ts := b.tensors()
	views := make([]tensor.View, len(ts))
	for i, t := range ts {
		views[i] = view(t.name, t.data, t.shape...)
	}
	if err := writeCheckpoint(dir, b.Config, views); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func writeCheckpoint(dir string, cfg Config, views []tensor.View) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, configFile), cfg.JSON(), 0o644); err != nil {
		return err
	}
	return atomicfile.WriteFunc(filepath.Join(dir, singleFile), 0o644, func(w io.Writer) error {
		return tensor.WriteSafetensors(w, views, map[string]string{"format": "pt"})
	})
}
