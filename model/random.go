package model

import (
	"carryon/tensor"
	"fmt"
	"math"
	"math/rand/v2"
)

// NewRandomBase returns an in-memory base with random weights, drawn like
// shared/tools/llamacpp/make-random-hf.py: matrices and embeddings from
// N(0, 1/fan_in), norm weights 1 + 0.1·N(0, 1), biases 0.1·N(0, 1), in the
// same tensor order. It is deterministic for (cfg, seed) (PCG, not numpy's
// stream, so the values differ from the script's).
func NewRandomBase(cfg Config, seed uint64) (*Base, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("model.NewRandomBase: %w", err)
	}
	if n := cfg.NumParams(); n > 1<<31 {
		return nil, fmt.Errorf("model.NewRandomBase: %d parameters is more than this in-memory helper allows", n)
	}
	b := &Base{Config: cfg}
	D, qd, kvd, hd := cfg.Dim, cfg.Heads*cfg.HeadDim, cfg.KVHeads*cfg.HeadDim, cfg.HeadDim
	b.embed = make([]float32, cfg.Vocab*D)
	b.finalNorm = make([]float32, D)
	b.lmHead = b.embed
	if !cfg.TiedEmbeddings {
		b.lmHead = make([]float32, cfg.Vocab*D)
	}
	b.layers = make([]layerWeights, cfg.Layers)
	for i := range b.layers {
		w := &b.layers[i]
		w.attnNorm, w.mlpNorm = make([]float32, D), make([]float32, D)
		w.wq, w.wo = f32Matrix(make([]float32, qd*D)), f32Matrix(make([]float32, D*qd))
		w.wk, w.wv = f32Matrix(make([]float32, kvd*D)), f32Matrix(make([]float32, kvd*D))
		if cfg.QKVBias {
			w.bq, w.bk, w.bv = make([]float32, qd), make([]float32, kvd), make([]float32, kvd)
		}
		if cfg.QKNorm {
			w.qNorm, w.kNorm = make([]float32, hd), make([]float32, hd)
		}
		w.gate, w.up = f32Matrix(make([]float32, cfg.FFN*D)), f32Matrix(make([]float32, cfg.FFN*D))
		w.down = f32Matrix(make([]float32, D*cfg.FFN))
	}
	rng := rand.New(rand.NewPCG(seed, 0x6361727279_6f6e)) // "carryon"
	for _, t := range b.tensors() {
		fillRandom(rng, t)
	}
	return b, nil
}

func fillRandom(rng *rand.Rand, t namedTensor) {
	switch t.kind {
	case kindMatrix:
		std := 1 / math.Sqrt(float64(t.shape[len(t.shape)-1]))
		for i := range t.data {
			t.data[i] = float32(rng.NormFloat64() * std)
		}
	case kindNorm:
		for i := range t.data {
			t.data[i] = float32(1 + 0.1*rng.NormFloat64())
		}
	case kindBias:
		for i := range t.data {
			t.data[i] = float32(0.1 * rng.NormFloat64())
		}
	}
}

// WriteRandomBase writes a random-weight checkpoint (config.json and an F32
// model.safetensors with HF tensor names) into dir; see NewRandomBase. The
// same (cfg, seed) always gives the same bytes.
func WriteRandomBase(dir string, cfg Config, seed uint64) error {
	b, err := NewRandomBase(cfg, seed)
	if err != nil {
		return fmt.Errorf("model.WriteRandomBase: %w", err)
	}
	if err := b.SaveHF(dir); err != nil {
		return fmt.Errorf("model.WriteRandomBase: %w", err)
	}
	return nil
}

// TinyConfig is a small configuration of the given family (qwen2, qwen3 or
// llama) for tests and examples: 2 layers, Dim 32, a 50-token vocabulary,
// with the family's biases, q/k norms or RoPE scaling switched on.
func TinyConfig(arch string) Config {
	c := Config{Arch: arch, Dim: 32, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 8, FFN: 48, Vocab: 50,
		MaxPos: 64, RopeTheta: 1e4, NormEps: 1e-6, TiedEmbeddings: true, BOS: 1, EOS: 2}
	switch arch {
	case "qwen2":
		c.QKVBias = true
	case "qwen3":
		c.QKNorm, c.HeadDim, c.QKVBias = true, 16, true // heads·hd != Dim, with attention_bias
	case "llama":
		c.TiedEmbeddings = false
		c.RopeScaling = &tensor.RoPEScaling{Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalContext: 16}
	}
	return c
}
