package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"carryon/tensor"
)

// Config is the shape of a base model of the llama / qwen2 / qwen3 families,
// read from a Hugging Face config.json.
type Config struct {
	Arch           string              // "qwen2", "qwen3" or "llama"
	Dim            int                 // hidden_size: width of the residual stream
	Layers         int                 // num_hidden_layers
	Heads          int                 // num_attention_heads (query heads)
	KVHeads        int                 // num_key_value_heads; Heads is a multiple of it
	HeadDim        int                 // head_dim; Heads·HeadDim may differ from Dim (Qwen3)
	FFN            int                 // intermediate_size of the SwiGLU MLP
	Vocab          int                 // vocab_size
	MaxPos         int                 // max_position_embeddings: longest sequence Forward accepts
	RopeTheta      float64             // rope_theta
	RopeScaling    *tensor.RoPEScaling // llama3-style frequency scaling, or nil
	NormEps        float32             // rms_norm_eps
	TiedEmbeddings bool                // tie_word_embeddings: the LM head is the embedding matrix
	QKVBias        bool                // q/k/v projections have biases (always for qwen2)
	QKNorm         bool                // per-head RMSNorm of q and k before RoPE (qwen3)
	BOS, EOS       int32               // bos/eos_token_id, -1 when absent
}

// Size caps checked by Validate before anything is allocated from a config
// (far above every real model of these families).
const (
	MaxDim     = 1 << 16
	MaxLayers  = 1 << 10
	MaxHeads   = 1 << 10
	MaxHeadDim = 1 << 10
	MaxFFN     = 1 << 18
	MaxVocab   = 1 << 22
	MaxMaxPos  = 1 << 24
)

// hfConfig is the subset of a Hugging Face config.json that these families
// use. Pointer fields tell "absent" from zero.
type hfConfig struct {
	Architectures []string        `json:"architectures"`
	ModelType     string          `json:"model_type"`
	HiddenSize    int             `json:"hidden_size"`
	Layers        int             `json:"num_hidden_layers"`
	Heads         int             `json:"num_attention_heads"`
	KVHeads       *int            `json:"num_key_value_heads"`
	HeadDim       *int            `json:"head_dim"`
	FFN           int             `json:"intermediate_size"`
	Vocab         int             `json:"vocab_size"`
	MaxPos        int             `json:"max_position_embeddings"`
	RopeTheta     *float64        `json:"rope_theta"`
	RopeScaling   json.RawMessage `json:"rope_scaling"`
	NormEps       *float64        `json:"rms_norm_eps"`
	Tied          *bool           `json:"tie_word_embeddings"`
	AttentionBias *bool           `json:"attention_bias"`
	MLPBias       *bool           `json:"mlp_bias"`
	HiddenAct     *string         `json:"hidden_act"`
	SlidingWindow *bool           `json:"use_sliding_window"`
	BOS           json.RawMessage `json:"bos_token_id"`
	EOS           json.RawMessage `json:"eos_token_id"`
	TorchDType    string          `json:"torch_dtype,omitempty"`
}

var archByClass = map[string]string{
	"Qwen2ForCausalLM": "qwen2",
	"Qwen3ForCausalLM": "qwen3",
	"LlamaForCausalLM": "llama",
}

var classByArch = map[string]string{"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}

// MaxConfigBytes caps the config.json a loader reads.
const MaxConfigBytes = 1 << 20

// ParseConfig reads a Hugging Face config.json of a qwen2, qwen3 or llama
// model and validates it.
func ParseConfig(data []byte) (Config, error) {
	if len(data) > MaxConfigBytes {
		return Config{}, fmt.Errorf("%d bytes exceeds the %d-byte cap of a config", len(data), MaxConfigBytes)
	}
	var h hfConfig
	if err := json.Unmarshal(data, &h); err != nil {
		return Config{}, fmt.Errorf("not valid JSON: %w", err)
	}
	c, err := h.config()
	if err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func (h *hfConfig) config() (Config, error) {
	arch := h.ModelType
	if arch == "" && len(h.Architectures) > 0 {
		arch = archByClass[h.Architectures[0]]
	}
	if _, ok := classByArch[arch]; !ok {
		return Config{}, fmt.Errorf("model_type %q (architectures %v): only qwen2, qwen3 and llama are supported", h.ModelType, h.Architectures)
	}
	c := Config{Arch: arch, Dim: h.HiddenSize, Layers: h.Layers, Heads: h.Heads, KVHeads: h.Heads,
		FFN: h.FFN, Vocab: h.Vocab, MaxPos: h.MaxPos, RopeTheta: 10000, NormEps: 1e-6,
		QKVBias: arch == "qwen2", QKNorm: arch == "qwen3"}
	if h.KVHeads != nil {
		c.KVHeads = *h.KVHeads
	}
	if h.HeadDim != nil && *h.HeadDim != 0 {
		c.HeadDim = *h.HeadDim
	} else if c.Heads > 0 {
		c.HeadDim = c.Dim / c.Heads
	}
	if h.RopeTheta != nil {
		c.RopeTheta = *h.RopeTheta
	}
	if h.NormEps != nil {
		c.NormEps = float32(*h.NormEps)
	}
	if h.Tied != nil {
		c.TiedEmbeddings = *h.Tied
	}
	if h.AttentionBias != nil && arch != "qwen2" {
		c.QKVBias = *h.AttentionBias
	}
	if h.MLPBias != nil && *h.MLPBias {
		return Config{}, errors.New("mlp_bias: true is not supported")
	}
	if h.HiddenAct != nil && *h.HiddenAct != "silu" {
		return Config{}, fmt.Errorf("hidden_act %q: only silu is supported", *h.HiddenAct)
	}
	if h.SlidingWindow != nil && *h.SlidingWindow {
		return Config{}, errors.New("use_sliding_window: true is not supported")
	}
	var err error
	if c.RopeScaling, err = parseRopeScaling(h.RopeScaling); err != nil {
		return Config{}, err
	}
	if c.BOS, err = tokenID("bos_token_id", h.BOS); err != nil {
		return Config{}, err
	}
	if c.EOS, err = tokenID("eos_token_id", h.EOS); err != nil {
		return Config{}, err
	}
	return c, nil
}

// parseRopeScaling accepts null, {"rope_type": "default"} and llama3 scaling.
func parseRopeScaling(raw json.RawMessage) (*tensor.RoPEScaling, error) {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	var s struct {
		RopeType string  `json:"rope_type"`
		Type     string  `json:"type"`
		Factor   float64 `json:"factor"`
		Low      float64 `json:"low_freq_factor"`
		High     float64 `json:"high_freq_factor"`
		Orig     int     `json:"original_max_position_embeddings"`
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("rope_scaling: %w", err)
	}
	kind := s.RopeType
	if kind == "" {
		kind = s.Type
	}
	switch kind {
	case "default", "":
		return nil, nil
	case "llama3":
		return &tensor.RoPEScaling{Factor: s.Factor, LowFreqFactor: s.Low, HighFreqFactor: s.High, OriginalContext: s.Orig}, nil
	}
	return nil, fmt.Errorf("rope_scaling: rope_type %q is not supported (only llama3)", kind)
}

// tokenID reads a token id that may be absent, null, a number or a list
// (the first entry counts). Absent is -1.
func tokenID(field string, raw json.RawMessage) (int32, error) {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return -1, nil
	}
	var one int64
	if err := json.Unmarshal(raw, &one); err != nil {
		var list []int64
		if err2 := json.Unmarshal(raw, &list); err2 != nil || len(list) == 0 {
			return 0, fmt.Errorf("%s: want an integer or a non-empty list of integers, got %s", field, raw)
		}
		one = list[0]
	}
	if one < -1 || one > math.MaxInt32 {
		return 0, fmt.Errorf("%s: %d out of range", field, one)
	}
	return int32(one), nil
}

// Validate checks every field against its bounds; the error names the
// field (and its config.json key).
func (c Config) Validate() error {
	if _, ok := classByArch[c.Arch]; !ok {
		return fmt.Errorf("Arch (model_type) %q: want qwen2, qwen3 or llama", c.Arch)
	}
	checks := []struct {
		name    string
		v, most int
	}{
		{"Dim (hidden_size)", c.Dim, MaxDim},
		{"Layers (num_hidden_layers)", c.Layers, MaxLayers},
		{"Heads (num_attention_heads)", c.Heads, MaxHeads},
		{"KVHeads (num_key_value_heads)", c.KVHeads, MaxHeads},
		{"HeadDim (head_dim)", c.HeadDim, MaxHeadDim},
		{"FFN (intermediate_size)", c.FFN, MaxFFN},
		{"Vocab (vocab_size)", c.Vocab, MaxVocab},
		{"MaxPos (max_position_embeddings)", c.MaxPos, MaxMaxPos},
	}
	for _, k := range checks {
		if k.v < 1 || k.v > k.most {
			return fmt.Errorf("%s = %d: want 1..%d", k.name, k.v, k.most)
		}
	}
	if c.Heads%c.KVHeads != 0 {
		return fmt.Errorf("Heads (num_attention_heads) = %d is not a multiple of KVHeads (num_key_value_heads) = %d", c.Heads, c.KVHeads)
	}
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("HeadDim (head_dim) = %d: RoPE needs an even head size", c.HeadDim)
	}
	if c.Heads*c.HeadDim > MaxDim {
		return fmt.Errorf("Heads·HeadDim = %d exceeds %d", c.Heads*c.HeadDim, MaxDim)
	}
	if !(c.RopeTheta > 1) || math.IsInf(c.RopeTheta, 0) {
		return fmt.Errorf("RopeTheta (rope_theta) = %g: want a finite value > 1", c.RopeTheta)
	}
	if !(c.NormEps > 0 && c.NormEps < 1) {
		return fmt.Errorf("NormEps (rms_norm_eps) = %g: want 0 < eps < 1", c.NormEps)
	}
	if s := c.RopeScaling; s != nil {
		if !(s.Factor >= 1) || !(s.LowFreqFactor > 0) || !(s.HighFreqFactor > s.LowFreqFactor) || s.OriginalContext < 1 {
			return fmt.Errorf("RopeScaling (rope_scaling) %+v: want factor >= 1, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings >= 1", *s)
		}
	}
	if c.QKNorm && c.Arch != "qwen3" {
		return fmt.Errorf("QKNorm is only used by qwen3, not %s", c.Arch)
	}
	for _, id := range []struct {
		name string
		v    int32
	}{{"BOS (bos_token_id)", c.BOS}, {"EOS (eos_token_id)", c.EOS}} {
		if id.v < -1 || int(id.v) >= c.Vocab {
			return fmt.Errorf("%s = %d: want -1 (none) or 0..%d", id.name, id.v, c.Vocab-1)
		}
	}
	return nil
}

// NumParams returns the number of weights (embedding and LM head counted
// once when tied).
func (c Config) NumParams() int64 {
	d, q, kv := int64(c.Dim), int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim)
	per := d + q*d + 2*kv*d + d*q + d + 3*d*int64(c.FFN)
	if c.QKVBias {
		per += q + 2*kv
	}
	if c.QKNorm {
		per += 2 * int64(c.HeadDim)
	}
	n := int64(c.Vocab)*d + int64(c.Layers)*per + d
	if !c.TiedEmbeddings {
		n += int64(c.Vocab) * d
	}
	return n
}

// JSON returns a Hugging Face style config.json for c (torch_dtype
// float32), which ParseConfig reads back to c.
func (c Config) JSON() []byte {
	m := map[string]any{
		"architectures":           []string{classByArch[c.Arch]},
		"model_type":              c.Arch,
		"hidden_size":             c.Dim,
		"num_hidden_layers":       c.Layers,
		"num_attention_heads":     c.Heads,
		"num_key_value_heads":     c.KVHeads,
		"head_dim":                c.HeadDim,
		"intermediate_size":       c.FFN,
		"vocab_size":              c.Vocab,
		"max_position_embeddings": c.MaxPos,
		"rope_theta":              finite(c.RopeTheta),
		"rms_norm_eps":            json.Number(strconv.FormatFloat(finite(float64(c.NormEps)), 'g', -1, 32)),
		"tie_word_embeddings":     c.TiedEmbeddings,
		"hidden_act":              "silu",
		"torch_dtype":             "float32",
		"use_sliding_window":      false,
	}
	if c.Arch != "qwen2" {
		m["attention_bias"] = c.QKVBias
	}
	if c.Arch == "llama" {
		m["mlp_bias"] = false
	}
	if c.BOS >= 0 {
		m["bos_token_id"] = c.BOS
	}
	if c.EOS >= 0 {
		m["eos_token_id"] = c.EOS
	}
	if s := c.RopeScaling; s != nil {
		m["rope_scaling"] = map[string]any{"rope_type": "llama3", "factor": finite(s.Factor), "low_freq_factor": finite(s.LowFreqFactor),
			"high_freq_factor": finite(s.HighFreqFactor), "original_max_position_embeddings": s.OriginalContext}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		panic("model.Config.JSON: " + err.Error()) // only maps of plain values: cannot fail
	}
	return append(b, '\n')
}

// finite maps NaN and ±Inf (which JSON cannot hold) to 0, so that JSON of
// an invalid config still yields a document that ParseConfig rejects.
func finite(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return f
}

// DemoConfig is a small random-weight test base: a qwen2 over bytes, with
// token ids 0..255 for the bytes, BOS 256, EOS 257 and PAD 258.
func DemoConfig() Config {
	return Config{Arch: "qwen2", Dim: 128, Layers: 4, Heads: 4, KVHeads: 2, HeadDim: 32, FFN: 352,
		Vocab: 259, MaxPos: 512, RopeTheta: 1e4, NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true,
		BOS: 256, EOS: 257}
}
