package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"carryon/internal/experiments"
	"carryon/model"
)

func runExperiment(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("experiment", "--data GSM8K.jsonl --out DIR [--only NAME] [--quick]", stderr)
	data := addQAFlag(fs)
	out := fs.String("out", "", "directory for experiments.json, experiments-results.md and img/*.svg (e.g. docs/)")
	only := fs.String("only", "", fmt.Sprintf("run some experiments (comma-separated) of %v, keeping the others' results in OUT/experiments.json", experiments.Names))
	quick := fs.Bool("quick", false, "tiny sizes: check the pipeline in seconds (numbers mean nothing)")
	modelFlag := addModelFlag(fs)
	cache := addScratchCacheFlag(fs)
	mixFlag := fs.String("mix", "auto", `second base for the mixture experiment (its final hidden states as a further source; it must share --model's tokenizer): a model as for --model, "auto" (the other embedded base: tiny for default, default for tiny; none otherwise) or "none"`)
	sizes := fs.String("sizes", "", fmt.Sprintf(`JSON object overriding some of the run's sizes, e.g. '{"clock_seconds": 120, "clock_seed": 2, "clock_methods": ["cached", "lora"]}' (field names as in experiments.json's setup.sizes; clock_methods of %q)`, experiments.ClockKeys))
	if err := parseFlags(fs, args, "data", "out"); err != nil {
		return err
	}
	var sz *experiments.Sizes
	if *sizes != "" {
		s := experiments.FullSizes()
		if *quick {
			s = experiments.QuickSizes()
		}
		dec := json.NewDecoder(strings.NewReader(*sizes))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s); err != nil {
			return fmt.Errorf("--sizes: %w", err)
		}
		sz = &s
	}
	m, err := model.Open(*modelFlag, model.OpenOptions{})
	if err != nil {
		return err
	}
	base, tok, name := m.Base, m.Tokenizer, m.Name
	defer base.Close()
	mixSpec := *mixFlag
	if mixSpec == "auto" {
		switch *modelFlag {
		case "default", "":
			mixSpec = "tiny"
		case "tiny":
			mixSpec = "default"
		default:
			mixSpec = "none"
		}
	}
	var mixBase *model.Base
	var mixName string
	if mixSpec != "none" && mixSpec != "" {
		mix, err := openMixBase(mixSpec, *modelFlag, tok, model.LoadOptions{})
		if err != nil {
			return err
		}
		defer mix.Base.Close()
		mixBase, mixName = mix.Base, mix.Name
	}
	start := time.Now()
	res, err := experiments.Run(ctx, base, tok, experiments.Options{Data: *data, Out: *out, Only: *only, Quick: *quick,
		CacheDir: *cache, BaseName: name, Sizes: sz, Mix: mixBase, MixName: mixName, Progress: func(msg string) {
			fmt.Fprintf(stdout, "[%6.1fs] %s\n", time.Since(start).Seconds(), msg)
		}})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "done in %.0f s: %s/experiments.json, experiments-results.md, img/*.svg\n", res.Setup.WallSeconds, *out)
	return nil
}
