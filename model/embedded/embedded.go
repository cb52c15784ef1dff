// Package embedded ships the default base inside the binary: a small
// Qwen2-architecture model with its own byte-level BPE tokenizer, pretrained
// by `carryon pretrain` on the Brown corpus (base/README.md has its
// provenance and losses; scripts/make-default-base.sh remakes it). It has
// real weights and a real tokenizer, so every stage of carryon runs as it
// would on a real model, but it is far too small to be a useful language
// model. model.Open("default") writes it out once and loads it like any
// Hugging Face directory.
package embedded

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"carryon/internal/atomicfile"
)

// Name names the embedded base in adverts, logs and the cache directory.
const Name = "carryon-brown-qwen2"

// Version changes whenever the embedded weights do, so that a binary never
// reuses a cached copy of other weights (v1 had a 128-token context, v2 is
// its extension to 512).
const Version = 2

//go:embed base/config.json base/model.safetensors base/tokenizer.json base/README.md
var files embed.FS

// Files are the files Write writes.
var Files = []string{"config.json", "model.safetensors", "tokenizer.json", "README.md"}

// Write writes the embedded base (config.json, model.safetensors,
// tokenizer.json and its README.md) into dir, creating it; each file is
// replaced atomically.
func Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write the embedded base: %w", err)
	}
	for _, name := range Files {
		data, err := fs.ReadFile(files, "base/"+name)
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
	dir := filepath.Join(cacheDir, fmt.Sprintf("%s-v%d", Name, Version))
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
	if err := Write(tmp); err != nil {
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
