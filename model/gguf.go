package model

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"carryon/tensor"
)

// GGUF checkpoints (llama.cpp's format) of the llama, qwen2 and qwen3
// families. The tensors are named as llama.cpp names them:
//
//	token_embd, output_norm, output (absent when tied), rope_freqs (llama3 scaling)
//	blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, attn_q_norm, attn_k_norm,
//	       ffn_norm, ffn_gate, ffn_up, ffn_down}.{weight,bias}
//
// and the hyper-parameters are <arch>.* metadata keys.

// ggufGlobal and ggufLayer map GGUF tensor names to Hugging Face ones.
var ggufGlobal = map[string]string{
	"token_embd.weight":  "model.embed_tokens.weight",
	"output_norm.weight": "model.norm.weight",
	"output.weight":      "lm_head.weight",
}

var ggufLayer = map[string]string{
	"attn_norm.weight":   "input_layernorm.weight",
	"ffn_norm.weight":    "post_attention_layernorm.weight",
	"attn_q.weight":      "self_attn.q_proj.weight",
	"attn_k.weight":      "self_attn.k_proj.weight",
	"attn_v.weight":      "self_attn.v_proj.weight",
	"attn_q.bias":        "self_attn.q_proj.bias",
	"attn_k.bias":        "self_attn.k_proj.bias",
	"attn_v.bias":        "self_attn.v_proj.bias",
	"attn_output.weight": "self_attn.o_proj.weight",
	"attn_q_norm.weight": "self_attn.q_norm.weight",
	"attn_k_norm.weight": "self_attn.k_norm.weight",
	"ffn_gate.weight":    "mlp.gate_proj.weight",
	"ffn_up.weight":      "mlp.up_proj.weight",
	"ffn_down.weight":    "mlp.down_proj.weight",
}

// maxRopeTable caps the positions of a precomputed RoPE table (rope_freqs
// files): Config.MaxPos is lowered to it.
const maxRopeTable = 1 << 17

// LoadGGUF opens a llama.cpp GGUF file of a llama, qwen2 or qwen3 model.
// The file is memory-mapped and every tensor is used in place in its stored
// format (F32, F16, BF16, Q8_0, Q4_K, Q6_K; see LoadOptions): the quantized
// matrices are decoded inside each product (tensor.GemmQuant), never into a
// float32 copy, unless LoadOptions.Widen asks for that. For llama, whose q/k
// rows llama.cpp's converter permutes into the interleaved RoPE order, the
// permutation is undone (a copy of attn_q/attn_k in the same format).
// WeightsHash is the sha256 of the whole file.
func LoadGGUF(path string) (*Base, error) { return LoadGGUFWith(path, LoadOptions{}) }

// LoadGGUFWith is LoadGGUF with options, as for LoadBaseWith.
func LoadGGUFWith(path string, opt LoadOptions) (*Base, error) {
	g, err := tensor.OpenGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("open model %s: %w", path, err)
	}
	b, err := loadGGUF(g, path, opt)
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("open model %s: %w", path, err)
	}
	return b, nil
}

func loadGGUF(g *tensor.GGUF, path string, opt LoadOptions) (*Base, error) {
	cfg, err := ggufConfig(g)
	if err != nil {
		return nil, err
	}
	b := &Base{Config: cfg, closers: []func() error{g.Close}}
	var freqs []float32
	if t, ok := g.Tensor("rope_freqs.weight"); ok {
		if t.Numel() != cfg.HeadDim/2 || len(t.Dims) != 1 {
			return nil, fmt.Errorf("tensor \"rope_freqs.weight\" has dims %v, want [%d]", t.Dims, cfg.HeadDim/2)
		}
		if freqs, err = t.Float32(); err != nil {
			return nil, err
		}
		b.Config.MaxPos = min(b.Config.MaxPos, maxRopeTable)
	}
	ws, err := ggufWeights(g, cfg, filepath.Base(path))
	if err != nil {
		return nil, err
	}
	if err := b.bind(ws, opt); err != nil {
		return nil, err
	}
	if freqs != nil {
		for i, f := range freqs {
			if !(f >= 1) || math.IsInf(float64(f), 0) {
				return nil, fmt.Errorf("tensor \"rope_freqs.weight\": divisor %d is %g, want a finite value >= 1", i, f)
			}
		}
		// Base.ropeFor only rebuilds the table for T > MaxPos, which
		// Forward rejects: this table, with llama.cpp's per-frequency
		// divisors, is the one used.
		b.rope = tensor.NewRoPEFreqFactors(cfg.HeadDim, b.Config.MaxPos, cfg.RopeTheta, freqs, false)
	}
	h := sha256.New()
	if err := hashFile(h, path); err != nil {
		b.Close()
		return nil, err
	}
	b.WeightsHash = hex.EncodeToString(h.Sum(nil))
	return b, nil
}

// ggufConfig reads the hyper-parameters from the metadata and the tensors
// that imply options (biases, q/k norms, an untied head).
func ggufConfig(g *tensor.GGUF) (Config, error) {
	arch, _ := g.String("general.architecture")
	if _, ok := classByArch[arch]; !ok {
		return Config{}, fmt.Errorf("general.architecture %q: only qwen2, qwen3 and llama are supported", arch)
	}
	var err error
	num := func(key string, def int) int {
		v, ok := g.Uint(arch + "." + key)
		switch {
		case err != nil:
		case !ok && def < 0:
			err = fmt.Errorf("metadata %s.%s is missing or not an unsigned integer", arch, key)
		case !ok:
			return def
		case v > math.MaxInt32:
			err = fmt.Errorf("metadata %s.%s = %d is out of range", arch, key, v)
		default:
			return int(v)
		}
		return 0
	}
	c := Config{Arch: arch, RopeTheta: 10000, NormEps: 1e-5, BOS: -1, EOS: -1}
	c.Dim = num("embedding_length", -1)
	c.Layers = num("block_count", -1)
	c.Heads = num("attention.head_count", -1)
	c.KVHeads = num("attention.head_count_kv", c.Heads)
	c.FFN = num("feed_forward_length", -1)
	c.MaxPos = num("context_length", -1)
	if c.Heads > 0 {
		c.HeadDim = num("attention.key_length", c.Dim/c.Heads)
	}
	vlen, rdim := num("attention.value_length", c.HeadDim), num("rope.dimension_count", c.HeadDim)
	if err != nil {
		return Config{}, err
	}
	if vlen != c.HeadDim || rdim != c.HeadDim {
		return Config{}, fmt.Errorf("value_length %d and rope.dimension_count %d must equal key_length %d", vlen, rdim, c.HeadDim)
	}
	if v, ok := g.Float(arch + ".rope.freq_base"); ok {
		c.RopeTheta = v
	}
	if v, ok := g.Float(arch + ".attention.layer_norm_rms_epsilon"); ok {
		c.NormEps = float32(v)
	} else {
		return Config{}, fmt.Errorf("metadata %s.attention.layer_norm_rms_epsilon is missing", arch)
	}
	if s, ok := g.String(arch + ".rope.scaling.type"); ok && s != "none" {
		return Config{}, fmt.Errorf("%s.rope.scaling.type %q is not supported (llama3 scaling comes as rope_freqs.weight)", arch, s)
	}
	if f, ok := g.Float(arch + ".rope.scaling.factor"); ok && f != 1 && f != 0 {
		return Config{}, fmt.Errorf("%s.rope.scaling.factor %g is not supported", arch, f)
	}
	emb, ok := g.Tensor("token_embd.weight")
	if !ok || len(emb.Dims) != 2 {
		return Config{}, errors.New("tensor \"token_embd.weight\" is missing or not a matrix")
	}
	c.Vocab = emb.Dims[1]
	_, untied := g.Tensor("output.weight")
	c.TiedEmbeddings = !untied
	_, c.QKVBias = g.Tensor("blk.0.attn_q.bias")
	_, c.QKNorm = g.Tensor("blk.0.attn_q_norm.weight")
	for _, id := range []struct {
		key string
		dst *int32
	}{{"tokenizer.ggml.bos_token_id", &c.BOS}, {"tokenizer.ggml.eos_token_id", &c.EOS}} {
		if v, ok := g.Uint(id.key); ok && v < uint64(c.Vocab) {
			*id.dst = int32(v)
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// ggufWeights turns the GGUF tensors into a weightSet under HF names and
// layout: shapes reversed to (out, in), ggml block types kept raw, and
// for llama the q/k rows put back into rotate-half order.
func ggufWeights(g *tensor.GGUF, c Config, file string) (weightSet, error) {
	ws := make(weightSet, len(g.Tensors))
	for _, t := range g.Tensors {
		if t.Name == "rope_freqs.weight" {
			continue
		}
		hf, err := ggufToHF(t.Name)
		if err != nil {
			return nil, err
		}
		v := tensor.View{Name: hf, Shape: t.Shape(), Data: t.Data}
		switch t.Type {
		case tensor.GGMLF32:
			v.DType = tensor.F32
		case tensor.GGMLF16:
			v.DType = tensor.F16
		case tensor.GGMLBF16:
			v.DType = tensor.BF16
		default: // a ggml block type: kept raw, decoded on use
			if _, err := t.Type.RowBytes(t.Numel()); err != nil {
				return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
			}
			v.Data = nil
		}
		e := &weightEntry{view: v, file: file + ":" + t.Name}
		if v.DType == "" {
			e.gtype, e.raw = t.Type, t.Data
		}
		if c.Arch == "llama" && (strings.Contains(hf, "q_proj") || strings.Contains(hf, "k_proj")) {
			heads := c.Heads
			if strings.Contains(hf, "k_proj") {
				heads = c.KVHeads
			}
			if err := unpermuteRoPE(e, heads); err != nil {
				return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
			}
		}
		ws[hf] = e
	}
	return ws, nil
}

// ggufToHF maps a GGUF tensor name to its Hugging Face name.
func ggufToHF(name string) (string, error) {
	if hf, ok := ggufGlobal[name]; ok {
		return hf, nil
	}
	if rest, ok := strings.CutPrefix(name, "blk."); ok {
		n, suffix, _ := strings.Cut(rest, ".")
		if i, err := strconv.Atoi(n); err == nil && i >= 0 && strconv.Itoa(i) == n {
			if hf, ok := ggufLayer[suffix]; ok {
				return "model.layers." + n + "." + hf, nil
			}
		}
	}
	return "", fmt.Errorf("unexpected tensor %q", name)
}

// unpermuteRoPE undoes llama.cpp's LlamaModel.permute on the rows of a q/k
// weight (heads·hd, in) or bias (heads·hd): within each head, GGUF row 2i
// is HF row i and row 2i+1 is HF row i+hd/2. The result is a new F32 view.
func unpermuteRoPE(e *weightEntry, heads int) error {
	src := e.raw
	if src == nil {
		src = e.view.Data
	}
	if len(e.view.Shape) == 0 {
		return errors.New("a scalar has no rows to reorder")
	}
	rows := e.view.Shape[0]
	if heads <= 0 || rows%heads != 0 || (rows/heads)%2 != 0 || len(src)%rows != 0 {
		return fmt.Errorf("%d rows do not split into %d heads of even size", rows, heads)
	}
	// Rows are independent in every storage format (quantized blocks run
	// along a row), so reordering whole rows of bytes is exact.
	rb := len(src) / rows
	hd := rows / heads
	dst := make([]byte, len(src))
	for h := 0; h < heads; h++ {
		for i := 0; i < hd/2; i++ {
			g0, g1 := (h*hd+2*i)*rb, (h*hd+2*i+1)*rb
			r0, r1 := (h*hd+i)*rb, (h*hd+i+hd/2)*rb
			copy(dst[r0:r0+rb], src[g0:g0+rb])
			copy(dst[r1:r1+rb], src[g1:g1+rb])
		}
	}
	if e.raw != nil {
		e.raw = dst
	} else {
		e.view.Data = dst
	}
	return nil
}
