package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"carryon/carryon"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
)

func init() {
	register("generate", "generate text with a base model and carry-on adaptor stages", runGenerate)
}

// defaultStoreDir is the coordinator cache's adaptor store, where `carryon
// train` and `carryon coordinator` keep adaptors by CID.
func defaultStoreDir() string {
	return filepath.Join(model.DefaultCacheDir(), "coordinator", "adaptors")
}

// loadAdaptors resolves a comma-separated list of adaptor files or CIDs
// (looked up in the store at storeDir), in stage order, and checks that
// each was made for base and that each boosting stage follows its parent.
func loadAdaptors(list, storeDir string, base *model.Base) ([]carryon.Stage, error) {
	var chain []carryon.Stage
	for _, spec := range strings.Split(list, ",") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		data, err := readAdaptor(spec, storeDir)
		if err != nil {
			return nil, err
		}
		st, err := carryon.DecodeStage(data, protocol.CIDOf(data).String(), base)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", spec, err)
		}
		chain = append(chain, st)
	}
	if err := carryon.CheckOrder(chain); err != nil {
		return nil, err
	}
	return chain, nil
}

// readAdaptor reads an adaptor file, or the adaptor with that CID from the
// local store (its hash is verified there).
func readAdaptor(spec, storeDir string) ([]byte, error) {
	data, ferr := os.ReadFile(spec)
	if ferr == nil {
		return data, nil
	}
	id, err := protocol.ParseCID(spec)
	if err != nil {
		return nil, fmt.Errorf("adaptor %s: neither a readable file (%v) nor a CID", spec, ferr)
	}
	store, err := swarm.NewDiskStore(storeDir)
	if err != nil {
		return nil, err
	}
	data, err = store.Get(id)
	if errors.Is(err, swarm.ErrNotFound) {
		return nil, fmt.Errorf("adaptor %s is not in the store %s (fetch it with 'carryon pull')", spec, storeDir)
	}
	return data, err
}

func runGenerate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("generate", "--model PATH|default [--adaptor FILE|CID[,...]] --prompt TEXT [flags]", stderr)
	modelFlag := fs.String("model", "default", "base model directory or .gguf file, or \"default\" for the embedded base")
	adaptors := fs.String("adaptor", "", "adaptor files or CIDs, comma-separated, applied in order as boosting stages (empty: the base alone)")
	store := fs.String("store", defaultStoreDir(), "adaptor store where CIDs are looked up")
	alpha := fs.Float64("alpha", 1, "scale α of every stage's customisation (0: the base alone)")
	prompt := fs.String("prompt", "", "text to continue")
	maxTokens := fs.Int("max-tokens", 128, "new tokens at most")
	temperature := fs.Float64("temperature", 0, "sampling temperature (0: greedy)")
	topK := fs.Int("top-k", 0, "sample among the k most likely tokens (0: all)")
	seed := fs.Uint64("seed", 1, "sampling seed")
	bridge := fs.String("bridge", "", "round-trip base hidden states through this bridge codec first, as in training (empty: exact)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *prompt == "" {
		fs.Usage()
		return errors.New("--prompt is required")
	}
	m, err := model.Open(*modelFlag, model.OpenOptions{})
	if err != nil {
		return err
	}
	base, tok := m.Base, m.Tokenizer
	defer base.Close()
	stages, err := loadAdaptors(*adaptors, *store, base)
	if err != nil {
		return err
	}
	g, err := carryon.Generate(base, tok, carryon.Models(stages), float32(*alpha), *prompt, carryon.GenerateOptions{
		MaxTokens: *maxTokens, Temperature: *temperature, TopK: *topK, Seed: *seed, Bridge: *bridge,
		OnToken: func(int32) bool { return ctx.Err() == nil },
	})
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, g.Text)
	return nil
}
