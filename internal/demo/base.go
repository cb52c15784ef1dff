// Package demo holds the embedded defaults (the pretrained default base and a
// small data set) and the in-process swarm that `carryon demo` runs.
package demo

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"carryon/model"
	"carryon/tokenizer"
)

// DefaultBaseName names the default base in adverts and logs.
const DefaultBaseName = EmbeddedBaseName

// EnsureDefaultBase writes the embedded default base into dir (unless it is
// already there) and returns dir. The default is a tiny Qwen2 model that
// carryon pretrained on the Brown corpus (assets/base/README.md): real
// weights and a real tokenizer, small enough to ship, far too small to be
// a useful language model.
func EnsureDefaultBase(dir string) (string, error) {
	if fileExists(filepath.Join(dir, "model.safetensors")) {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(dir)), 0o755); err != nil {
		return "", fmt.Errorf("demo.EnsureDefaultBase: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dir)), ".base-*")
	if err != nil {
		return "", fmt.Errorf("demo.EnsureDefaultBase: %w", err)
	}
	if err := WriteEmbeddedBase(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if fileExists(filepath.Join(dir, "model.safetensors")) {
			return dir, nil // another process won the race
		}
		return "", fmt.Errorf("demo.EnsureDefaultBase: %w", err)
	}
	return dir, nil
}

// DefaultCacheDir is where commands keep the default base between runs.
func DefaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "carryon")
	}
	return filepath.Join(os.TempDir(), "carryon")
}

// OpenModel resolves a --model flag: "default" is the embedded base
// (written under cacheDir on first use), a .gguf file a llama.cpp model
// (tokenizer from its metadata), anything else a directory with config.json
// and safetensors weights. It returns the loaded base, its tokenizer (see
// OpenTokenized) and a display name; a missing tokenizer is an error.
func OpenModel(spec, cacheDir string) (*model.Base, tokenizer.Tokenizer, string, error) {
	b, tok, tokErr, name, err := OpenTokenized(spec, cacheDir)
	if err != nil {
		return nil, nil, "", err
	}
	if tokErr != nil {
		b.Close()
		return nil, nil, "", tokErr
	}
	return b, tok, name, nil
}

// OpenTokenized is OpenModel for callers that can work on token ids alone:
// the base opens even when no tokenizer fits, and tokErr says why. The
// tokenizer is the GGUF's own, the directory's tokenizer.json, or the byte
// tokenizer for a byte-vocabulary model without one.
func OpenTokenized(spec, cacheDir string) (b *model.Base, tok tokenizer.Tokenizer, tokErr error, name string, err error) {
	dir := spec
	name = filepath.Base(filepath.Clean(spec))
	if spec == "" || spec == "default" {
		if err := os.MkdirAll(cacheDir, 0o755); err != nil {
			return nil, nil, nil, "", fmt.Errorf("demo.OpenModel: %w", err)
		}
		// The directory name is versioned: a binary with other embedded
		// weights must not reuse a cached copy of older ones (v1 had a
		// 128-token context, v2 is its extension to 512).
		if dir, err = EnsureDefaultBase(filepath.Join(cacheDir, "default-base-brown-v2")); err != nil {
			return nil, nil, nil, "", err
		}
		name = DefaultBaseName
	}
	if strings.EqualFold(filepath.Ext(dir), ".gguf") {
		if b, err = model.LoadGGUF(dir); err != nil {
			return nil, nil, nil, "", err
		}
		t, tokErr := tokenizer.LoadGGUF(dir)
		if tokErr != nil {
			return b, nil, tokErr, strings.TrimSuffix(name, filepath.Ext(name)), nil
		}
		return b, t, nil, strings.TrimSuffix(name, filepath.Ext(name)), nil
	}
	if b, err = model.LoadBase(dir); err != nil {
		return nil, nil, nil, "", err
	}
	if p := filepath.Join(dir, "tokenizer.json"); fileExists(p) {
		t, tokErr := tokenizer.LoadTokenizer(p)
		if tokErr != nil {
			return b, nil, tokErr, name, nil
		}
		return b, t, nil, name, nil
	}
	if b.Config.Vocab == (tokenizer.ByteTokenizer{}).VocabSize() {
		return b, tokenizer.ByteTokenizer{}, nil, name, nil
	}
	return b, nil, fmt.Errorf("demo.OpenModel: %s has no tokenizer.json and its vocabulary (%d) is not the byte tokenizer's", dir, b.Config.Vocab), name, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
