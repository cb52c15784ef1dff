// Package demo holds the embedded defaults (a stand-in base model and a
// small data set) and the in-process swarm that `carryon demo` runs.
package demo

import (
	"fmt"
	"os"
	"path/filepath"

	"carryon/model"
)

// DefaultBaseSeed fixes the stand-in base's weights, so every machine
// derives the same weights hash.
const DefaultBaseSeed = 20261127

// DefaultBaseName names the stand-in base in adverts and logs.
const DefaultBaseName = "carryon-demo-qwen2-random"

// EnsureDefaultBase writes the embedded default base into dir (unless it
// is already there) and returns dir. Until a pretrained default ships, it is
// a seeded random-weight Qwen2 model with a byte-level vocabulary: a
// stand-in that exercises every stage, not a useful language model.
func EnsureDefaultBase(dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dir)), ".base-*")
	if err != nil {
		return "", fmt.Errorf("demo.EnsureDefaultBase: %w", err)
	}
	if err := model.WriteRandomBase(tmp, model.DemoConfig(), DefaultBaseSeed); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("demo.EnsureDefaultBase: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(filepath.Join(dir, "model.safetensors")); serr == nil {
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

// OpenModel resolves a --model flag: "default" is the embedded stand-in
// base (written under cacheDir on first use), anything else a directory
// with config.json and safetensors weights. It returns the loaded base and
// its tokenizer (the byte tokenizer for the default base, tokenizer.json
// otherwise).
func OpenModel(spec, cacheDir string) (*model.Base, model.Tokenizer, string, error) {
	dir := spec
	name := filepath.Base(filepath.Clean(spec))
	if spec == "" || spec == "default" {
		if err := os.MkdirAll(cacheDir, 0o755); err != nil {
			return nil, nil, "", fmt.Errorf("demo.OpenModel: %w", err)
		}
		var err error
		if dir, err = EnsureDefaultBase(filepath.Join(cacheDir, "default-base-v1")); err != nil {
			return nil, nil, "", err
		}
		name = DefaultBaseName
	}
	b, err := model.LoadBase(dir)
	if err != nil {
		return nil, nil, "", err
	}
	var tok model.Tokenizer = model.ByteTokenizer{}
	if p := filepath.Join(dir, "tokenizer.json"); fileExists(p) {
		t, err := model.LoadTokenizer(p)
		if err != nil {
			b.Close()
			return nil, nil, "", err
		}
		tok = t
	} else if b.Config.Vocab != (model.ByteTokenizer{}).VocabSize() {
		b.Close()
		return nil, nil, "", fmt.Errorf("demo.OpenModel: %s has no tokenizer.json and its vocabulary (%d) is not the byte tokenizer's", dir, b.Config.Vocab)
	}
	return b, tok, name, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
