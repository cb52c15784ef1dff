package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"carryon/internal/experiments"
	"carryon/model"
)

func runSearch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("search", "--data FILE.jsonl [--out DIR] [flags]", stderr)
	data := addQAFlag(fs)
	out := fs.String("out", "", "directory for search.md and the Pareto plots (search-params.svg, search-step.svg); empty: table on stdout only")
	modelFlag := addModelFlag(fs)
	cache := addScratchCacheFlag(fs)
	steps := fs.Int("steps", 100, "optimiser steps per trial")
	parallel := fs.Int("parallel", 0, "trials trained at once (0: GOMAXPROCS)")
	train := fs.Int("train", 1000, "problems trained on")
	val := fs.Int("val", 60, "validation problems (choose each trial's checkpoint and α)")
	test := fs.Int("test", 60, "held-out problems (score the trials)")
	batch := fs.Int("batch", 8, "sequences per step")
	noStop := fs.Bool("no-stop", false, "train every trial to the end (default: successive halving: every trial trains to steps/9 and is ranked on the first validation chunk, the best third goes on to steps/3, the best third of those to the end; only they are scored on the test split)")
	compare := fs.Int("compare-trains", 0, "after the search, time three separate 'carryon train' runs of the reference carry-on (h=64, L=2) of this many steps, each embedding the data again (0: no)")
	// --cpuprofile FILE (hidden: a developer's flag, not in the usage)
	// writes a CPU profile of the whole search.
	rest, cpuProfile, err := cutHiddenFlag(args, "cpuprofile")
	if err != nil {
		return err
	}
	if err := parseFlags(fs, rest, "data"); err != nil {
		return err
	}
	stopProfile, err := startCPUProfile(cpuProfile)
	if err != nil {
		return fmt.Errorf("search: %w", err)
	}
	defer stopProfile()
	m, err := model.Open(*modelFlag, model.OpenOptions{})
	if err != nil {
		return err
	}
	base, tok, name := m.Base, m.Tokenizer, m.Name
	defer base.Close()
	if tok == nil {
		return fmt.Errorf("search: %s: %w", name, m.TokenizerErr)
	}
	sz := experiments.FullSizes()
	sz.TrainProblems, sz.SelectProblems, sz.ValProblems, sz.Batch, sz.SearchSteps, sz.SearchParallel = *train, *val, *test, *batch, *steps, *parallel
	sz.SearchNoStop = *noStop
	if *compare < 0 {
		return fmt.Errorf("--compare-trains %d: want 0 (no) or a number of steps", *compare)
	}
	if *compare > 0 {
		sz.Steps = *compare
	}
	start := time.Now()
	fmt.Fprintf(stdout, "base %s; %d configurations, %d steps each\n", name, len(experiments.SearchGrid()), *steps)
	res, err := experiments.Search(ctx, base, tok, experiments.SearchOptions{Data: *data, CacheDir: *cache, Sizes: sz, CompareTrains: *compare > 0,
		Progress: func(msg string) { fmt.Fprintf(stdout, "[%6.1fs] %s\n", time.Since(start).Seconds(), msg) }})
	if err != nil {
		return err
	}
	table := experiments.SearchTable(res)
	fmt.Fprintf(stdout, "\n%s\n", table)
	fmt.Fprintf(stdout, "base alone: %.4f; embedding %.1f s once; %d trials (%d stopped early) in %.1f s wall (%.1f s per trial, %d at once); total %.1f s\n",
		res.BaseLoss, res.EmbedSeconds, len(res.Trials), res.Stopped, res.TrialsSeconds, res.TrialsSeconds/float64(max(1, len(res.Trials))), res.Parallel, time.Since(start).Seconds())
	if res.ThreeTrains > 0 {
		fmt.Fprintf(stdout, "search with its embedding: %.1f s (%.1f CPU s); three separate trains of %d steps, each embedding: %.1f s (%v; %.1f CPU s)\n",
			res.EmbedSeconds+res.TrialsSeconds, res.SearchCPU, res.TrainSteps, res.ThreeTrains, res.TrainSeconds, res.TrainsCPU)
	}
	if *out == "" {
		return nil
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	byParams, byStep := experiments.SearchCharts(res)
	for name, b := range map[string][]byte{"search.md": table, "search-params.svg": byParams.SVG(), "search-step.svg": byStep.SVG()} {
		if err := os.WriteFile(filepath.Join(*out, name), b, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote %s/search.md, search-params.svg, search-step.svg\n", *out)
	return nil
}
