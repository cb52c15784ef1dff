package model

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"carryon/model/embedded"
	"carryon/tokenizer"
)

// DefaultCacheDir is where carryon keeps what it writes for later runs
// (the default base, the coordinator's cache) unless told otherwise.
func DefaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "carryon")
	}
	return filepath.Join(os.TempDir(), "carryon")
}

// OpenOptions configures Open.
type OpenOptions struct {
	// CacheDir receives the embedded default base on first use; empty
	// means DefaultCacheDir().
	CacheDir string
	// WithoutTokenizer opens the base even when no tokenizer fits it
	// (callers that work on token ids alone); Opened.TokenizerErr says why.
	WithoutTokenizer bool
	// Load is passed to the loader.
	Load LoadOptions
}

// Opened is a loaded base with its tokenizer and a display name.
type Opened struct {
	Base         *Base
	Tokenizer    tokenizer.Tokenizer // nil only with WithoutTokenizer
	TokenizerErr error               // why Tokenizer is nil
	Name         string              // for adverts and logs
}

// Open resolves a --model argument, recognising files by their content,
// not their name:
//
//   - "default" (or ""): the base embedded in the binary, written under
//     CacheDir on first use; "tiny": the small embedded base, likewise
//     (both bf16, loaded with LoadOptions.ExactBF16: their hidden states
//     stay those of the exact float32 products they were trained with);
//   - a GGUF file (any name: ollama stores blobs as sha256-…): llama.cpp's
//     format, with the tokenizer from its metadata;
//   - a directory: Hugging Face layout (config.json, model.safetensors or
//     shards), with tokenizer.json (byte-level BPE, or SentencePiece as
//     Llama 2, TinyLlama and Mistral ship it), or the byte tokenizer for a
//     byte-vocabulary test model without one.
func Open(spec string, o OpenOptions) (*Opened, error) {
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir()
	}
	path, name := spec, filepath.Base(filepath.Clean(spec))
	if spec == "" || spec == "default" {
		var err error
		if path, err = embedded.Ensure(o.CacheDir); err != nil {
			return nil, fmt.Errorf("open the default model: %w", err)
		}
		name = embedded.Name
		o.Load.ExactBF16 = true // see LoadOptions.ExactBF16
	} else if spec == "tiny" {
		var err error
		if path, err = embedded.EnsureTiny(o.CacheDir); err != nil {
			return nil, fmt.Errorf("open the tiny model: %w", err)
		}
		name = embedded.TinyName
		o.Load.ExactBF16 = true
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open model %s: %w", spec, err)
	}
	m := &Opened{Name: name}
	switch {
	case st.IsDir():
		if m.Base, err = LoadBaseWith(path, o.Load); err != nil {
			return nil, err
		}
		m.Tokenizer, m.TokenizerErr = dirTokenizer(path, m.Base.Config.Vocab)
	case isGGUF(path):
		if m.Base, err = LoadGGUFWith(path, o.Load); err != nil {
			return nil, err
		}
		m.Name = strings.TrimSuffix(name, filepath.Ext(name))
		m.Tokenizer, m.TokenizerErr = tokenizer.LoadGGUF(path)
	default:
		return nil, fmt.Errorf("open model %s: neither a GGUF file nor a Hugging Face directory (config.json + model.safetensors + tokenizer.json)", spec)
	}
	if m.TokenizerErr != nil && !o.WithoutTokenizer {
		m.Base.Close()
		return nil, fmt.Errorf("open model %s: %w", spec, m.TokenizerErr)
	}
	return m, nil
}

// dirTokenizer loads a Hugging Face directory's tokenizer.json (either
// form: tokenizer.LoadHF), or the byte tokenizer for a byte-vocabulary
// model without one.
func dirTokenizer(dir string, vocab int) (tokenizer.Tokenizer, error) {
	p := filepath.Join(dir, "tokenizer.json")
	if _, err := os.Stat(p); err == nil {
		return tokenizer.LoadHF(p)
	}
	if vocab == (tokenizer.ByteTokenizer{}).VocabSize() {
		return tokenizer.ByteTokenizer{}, nil
	}
	return nil, fmt.Errorf("%s has no tokenizer.json and its vocabulary (%d) is not the byte tokenizer's", dir, vocab)
}

// isGGUF reports whether the file at path starts with GGUF's magic.
func isGGUF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return false
	}
	return bytes.Equal(magic[:], []byte("GGUF"))
}
