package demo

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// EmbeddedBaseName names the pretrained default base in adverts and logs.
const EmbeddedBaseName = "carryon-brown-qwen2"

// embeddedBase holds the pretrained default base: a small Qwen2 model with
// its own byte-level BPE tokenizer, trained by `carryon pretrain` on the
// Brown corpus (see assets/base/README.md and scripts/make-default-base.sh).
//
//go:embed assets/base/config.json assets/base/model.safetensors assets/base/tokenizer.json assets/base/README.md
var embeddedBase embed.FS

// embeddedBaseFiles are the files WriteEmbeddedBase writes.
var embeddedBaseFiles = []string{"config.json", "model.safetensors", "tokenizer.json", "README.md"}

// WriteEmbeddedBase writes the embedded pretrained base (config.json,
// model.safetensors, tokenizer.json and its README.md) into dir, creating
// it. Each file is written to a temporary name and renamed, so a reader
// never sees a partial file; existing files are replaced.
func WriteEmbeddedBase(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("demo.WriteEmbeddedBase: %w", err)
	}
	for _, name := range embeddedBaseFiles {
		data, err := fs.ReadFile(embeddedBase, "assets/base/"+name)
		if err != nil {
			return fmt.Errorf("demo.WriteEmbeddedBase: %w", err)
		}
		f, err := os.CreateTemp(dir, "."+name+".*")
		if err != nil {
			return fmt.Errorf("demo.WriteEmbeddedBase: %w", err)
		}
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chmod(f.Name(), 0o644)
		}
		if err == nil {
			err = os.Rename(f.Name(), filepath.Join(dir, name))
		}
		if err != nil {
			os.Remove(f.Name())
			return fmt.Errorf("demo.WriteEmbeddedBase: %w", err)
		}
	}
	return nil
}
