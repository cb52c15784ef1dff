package tokenizer

import (
	"errors"
	"fmt"

	"carryon/tensor"
)

// LoadGGUF reads the byte-level BPE tokenizer ("gpt2" model) that
// a GGUF file carries in its tokenizer.ggml.* metadata.
func LoadGGUF(path string) (*BPETokenizer, error) {
	g, err := tensor.OpenGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.LoadGGUF: %w", err)
	}
	defer g.Close()
	t, err := FromGGUF(g)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.LoadGGUF: %s: %w", path, err)
	}
	return t, nil
}

// FromGGUF builds the tokenizer of a parsed GGUF file as llama.cpp
// does: control (3) and user-defined (4) tokens are split out of the text;
// BOS and EOS come from tokenizer.ggml.bos/eos_token_id.
func FromGGUF(g *tensor.GGUF) (*BPETokenizer, error) {
	if m, _ := g.String("tokenizer.ggml.model"); m != "gpt2" {
		return nil, fmt.Errorf("tokenizer.ggml.model = %q: only gpt2 (byte-level BPE) is supported", m)
	}
	vTok, _ := g.Get("tokenizer.ggml.tokens")
	vMrg, _ := g.Get("tokenizer.ggml.merges")
	toks, ok1 := vTok.([]string)
	merges, ok2 := vMrg.([]string)
	if !ok1 || !ok2 {
		return nil, errors.New("tokenizer.ggml.tokens or tokenizer.ggml.merges is missing or not a string array")
	}
	pre, _ := g.String("tokenizer.ggml.pre")
	special := map[string]int32{}
	vTyp, _ := g.Get("tokenizer.ggml.token_type")
	if types, ok := vTyp.([]int32); ok {
		for i, ty := range types {
			if (ty == 3 || ty == 4) && i < len(toks) {
				special[toks[i]] = int32(i)
			}
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
