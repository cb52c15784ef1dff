// Package embedded ships two bases inside the binary. The default,
// carryon-mix-qwen2 (base/README.md, scripts/make-default-base.sh), is a
// 5.5M-parameter Qwen2-architecture model pretrained by `carryon pretrain`
// on English text and program-generated arithmetic; the tiny base,
// carryon-brown-qwen2 (tiny/README.md, scripts/make-tiny-base.sh), is the
// earlier 2.4M-parameter Brown-corpus model, kept for fast tests. Both use
// the tiny base's byte-level BPE tokenizer. They have real weights and a
// real tokenizer, so every stage of carryon runs as it would on a real
// model, but they are far too small to be useful language models.
// model.Open("default") and model.Open("tiny") write one out once and load
// it like any Hugging Face directory.
package embedded

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"carryon/internal/atomicfile"
)

// Name names the default base in adverts, logs and the cache directory;
// TinyName the tiny one.
const (
	Name     = "carryon-mix-qwen2"
	TinyName = "carryon-brown-qwen2"
)

// Version and TinyVersion change whenever the embedded weights do, so that
// a binary never reuses a cached copy of other weights (the tiny base's v1
// had a 128-token context, v2 is its extension to 512).
const (
	Version     = 1
	TinyVersion = 2
)

//go:embed base/config.json base/model.safetensors base/tokenizer.json base/README.md
//go:embed tiny/config.json tiny/model.safetensors tiny/tokenizer.json tiny/README.md
var files embed.FS

// Files are the files Write writes.
var Files = []string{"config.json", "model.safetensors", "tokenizer.json", "README.md"}

// Write writes the embedded base (config.json, model.safetensors,
// tokenizer.json and its README.md) into dir, creating it; each file is
// replaced atomically.
func Write(dir string) error { return write("base", dir) }

// WriteTiny is Write for the tiny base.
func WriteTiny(dir string) error { return write("tiny", dir) }

func write(which, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write the embedded base: %w", err)
	}
	for _, name := range Files {
		data, err := fs.ReadFile(files, which+"/"+name)
		if err == nil {
			err = atomicfile.Write(filepath.Join(dir, name), data, 0o644)
		}
		if err != nil {
			return fmt.Errorf("write the embedded base: %w", err)
		}
	}
	return nil
}

// Ensure writes the embedded base into cacheDir/<Name>-v<Version> unless it
// is already there, and returns that directory. Concurrent callers (several
// processes) are safe: the base is written to a temporary directory and
// renamed into place.
func Ensure(cacheDir string) (string, error) {
	return ensure(filepath.Join(cacheDir, fmt.Sprintf("%s-v%d", Name, Version)), cacheDir, Write)
}

// EnsureTiny is Ensure for the tiny base.
func EnsureTiny(cacheDir string) (string, error) {
	return ensure(filepath.Join(cacheDir, fmt.Sprintf("%s-v%d", TinyName, TinyVersion)), cacheDir, WriteTiny)
}

func ensure(dir, cacheDir string, write func(string) error) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("write the embedded base: %w", err)
	}
	tmp, err := os.MkdirTemp(cacheDir, ".base-*")
	if err != nil {
		return "", fmt.Errorf("write the embedded base: %w", err)
	}
	if err := write(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(filepath.Join(dir, "model.safetensors")); serr == nil {
			return dir, nil // another process won the race
		}
		return "", fmt.Errorf("write the embedded base: %w", err)
	}
	return dir, atomicfile.SyncDir(cacheDir)
}
