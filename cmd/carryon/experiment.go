package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"carryon/internal/experiments"
	"carryon/model"
)

func init() {
	register("experiment", "run the GSM8K experiments (docs/experiments.md): results JSON, tables and SVG plots", runExperiment)
}

func runExperiment(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("experiment", "--data GSM8K.jsonl --out DIR [--only NAME] [--quick]", stderr)
	data := fs.String("data", "", "GSM8K-style JSONL with question and answer fields")
	out := fs.String("out", "", "directory for experiments.json, experiments-results.md and img/*.svg (e.g. docs/)")
	only := fs.String("only", "", fmt.Sprintf("run one experiment of %v, keeping the others' results in OUT/experiments.json", experiments.Names))
	quick := fs.Bool("quick", false, "tiny sizes: check the pipeline in seconds (numbers mean nothing)")
	modelFlag := fs.String("model", "default", "base model directory, or \"default\" for the embedded base")
	cache := fs.String("cache", "", "embedding cache directory (default: a temporary one, removed at the end)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *data == "" || *out == "" {
		fs.Usage()
		return errors.New("--data and --out are required")
	}
	m, err := model.Open(*modelFlag, model.OpenOptions{})
	if err != nil {
		return err
	}
	base, tok, name := m.Base, m.Tokenizer, m.Name
	defer base.Close()
	start := time.Now()
	res, err := experiments.Run(ctx, base, tok, experiments.Options{Data: *data, Out: *out, Only: *only, Quick: *quick,
		CacheDir: *cache, BaseName: name, Progress: func(msg string) {
			fmt.Fprintf(stdout, "[%6.1fs] %s\n", time.Since(start).Seconds(), msg)
		}})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "done in %.0f s: %s/experiments.json, experiments-results.md, img/*.svg\n", res.Setup.WallSeconds, *out)
	return nil
}
