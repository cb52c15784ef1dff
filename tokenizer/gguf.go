package tokenizer

import (
	"errors"
	"fmt"
	"strings"

	"carryon/tensor"
)

// LoadGGUF reads the tokenizer that a GGUF file carries in its
// tokenizer.ggml.* metadata: byte-level BPE ("gpt2": Llama 3, Qwen2/3,
// GPT-2) as a *BPETokenizer or SentencePiece ("llama": Llama 2, TinyLlama,
// Mistral, Phi-3) as a *SPMTokenizer.
func LoadGGUF(path string) (Tokenizer, error) {
	g, err := tensor.OpenGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("read the tokenizer of %s: %w", path, err)
	}
	defer g.Close()
	t, err := FromGGUF(g)
	if err != nil {
		return nil, fmt.Errorf("read the tokenizer of %s: %w", path, err)
	}
	return t, nil
}

// FromGGUF builds the tokenizer of a parsed GGUF file as llama.cpp does,
// by its tokenizer.ggml.model (see LoadGGUF).
func FromGGUF(g *tensor.GGUF) (Tokenizer, error) {
	switch m, _ := g.String("tokenizer.ggml.model"); m {
	case "gpt2":
		return BPEFromGGUF(g)
	case "llama":
		return SPMFromGGUF(g)
	default:
		return nil, fmt.Errorf("tokenizer.ggml.model = %q: supported are gpt2 (byte-level BPE) and llama (SentencePiece)", m)
	}
}

// ggufTokens returns tokenizer.ggml.tokens and, when present,
// tokenizer.ggml.token_type (checked to cover every token).
func ggufTokens(g *tensor.GGUF) ([]string, []int32, error) {
	vTok, _ := g.Get("tokenizer.ggml.tokens")
	toks, ok := vTok.([]string)
	if !ok {
		return nil, nil, errors.New("tokenizer.ggml.tokens is missing or not a string array")
	}
	vTyp, present := g.Get("tokenizer.ggml.token_type")
	if !present {
		return toks, nil, nil
	}
	types, ok := vTyp.([]int32)
	if !ok || len(types) < len(toks) {
		return nil, nil, fmt.Errorf("tokenizer.ggml.token_type must be an int32 array of at least %d entries", len(toks))
	}
	return toks, types[:len(toks)], nil
}

// BPEFromGGUF builds the byte-level BPE tokenizer ("gpt2" model) of a
// parsed GGUF file as llama.cpp does: control (3) and user-defined (4)
// tokens are split out of the text; BOS and EOS come from
// tokenizer.ggml.bos/eos_token_id.
func BPEFromGGUF(g *tensor.GGUF) (*BPETokenizer, error) {
	toks, types, err := ggufTokens(g)
	if err != nil {
		return nil, err
	}
	vMrg, _ := g.Get("tokenizer.ggml.merges")
	merges, ok := vMrg.([]string)
	if !ok {
		return nil, errors.New("tokenizer.ggml.merges is missing or not a string array")
	}
	pre, _ := g.String("tokenizer.ggml.pre")
	special := map[string]int32{}
	for i, ty := range types {
		if ty == SPMTypeControl || ty == SPMTypeUserDefined {
			special[toks[i]] = int32(i)
		}
	}
	tk, err := NewBPETokenizer(toks, merges, pre, special)
	if err != nil {
		return nil, err
	}
	if v, ok := g.Uint("tokenizer.ggml.bos_token_id"); ok && v < uint64(len(toks)) {
		tk.SetBOS(int32(v))
	}
	if v, ok := g.Uint("tokenizer.ggml.eos_token_id"); ok && v < uint64(len(toks)) {
		tk.SetEOS(int32(v))
	}
	return tk, nil
}

// SPMFromGGUF builds the SentencePiece tokenizer ("llama" model) of a
// parsed GGUF file with llama.cpp's defaults: BOS 1, EOS 2, unknown 0
// unless tokenizer.ggml.{bos,eos,unknown}_token_id say otherwise (an id
// outside the vocabulary is ignored, as llama.cpp does), the space prefix
// on unless tokenizer.ggml.add_space_prefix is false, and no BOS at all
// when tokenizer.ggml.add_bos_token is false. Phi-3's special tokens
// swallow the whitespace after them, as llama.cpp decides by the model's
// general.name.
func SPMFromGGUF(g *tensor.GGUF) (*SPMTokenizer, error) {
	toks, types, err := ggufTokens(g)
	if err != nil {
		return nil, err
	}
	c := SPMConfig{Tokens: toks, Types: types, BOS: 1, EOS: 2, UNK: 0, AddSpacePrefix: true}
	if v, present := g.Get("tokenizer.ggml.scores"); present {
		scores, ok := v.([]float32)
		if !ok || len(scores) < len(toks) {
			return nil, fmt.Errorf("tokenizer.ggml.scores must be a float32 array of at least %d entries", len(toks))
		}
		c.Scores = scores[:len(toks)]
	}
	n := int32(len(toks))
	for _, x := range []struct {
		key string
		dst *int32
	}{{"tokenizer.ggml.bos_token_id", &c.BOS}, {"tokenizer.ggml.eos_token_id", &c.EOS}, {"tokenizer.ggml.unknown_token_id", &c.UNK}} {
		if *x.dst >= n {
			*x.dst = -1
		}
		if v, ok := g.Uint(x.key); ok && v < uint64(n) {
			*x.dst = int32(v)
		}
	}
	if v, ok := g.Get("tokenizer.ggml.add_space_prefix"); ok {
		if b, isBool := v.(bool); isBool {
			c.AddSpacePrefix = b
		}
	}
	name, _ := g.String("general.name")
	if name = strings.ToLower(name); strings.Contains(name, "phi-3") || strings.Contains(name, "phi3") {
		keep := map[string]bool{"<unk>": true, "<s>": true, "<|endoftext|>": true}
		for id, ty := range types {
			if (ty == SPMTypeControl || ty == SPMTypeUserDefined || ty == SPMTypeUnknown || toks[id] == "</s>") && !keep[toks[id]] {
				c.RStrip = append(c.RStrip, int32(id))
			}
		}
	}
	if v, ok := g.Get("tokenizer.ggml.add_bos_token"); ok {
		if b, isBool := v.(bool); isBool && !b {
			c.BOS = -1 // callers put BOS() in front when it is >= 0
		}
	}
	return NewSPMTokenizer(c)
}
