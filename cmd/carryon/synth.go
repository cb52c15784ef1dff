package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"carryon/internal/synth"
)

func runSynth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("synth", "--family drill|one-step|multi-step --n N --seed S (--corpus DIR | --jsonl FILE)", stderr)
	family := fs.String("family", string(synth.OneStep), "problem family: drill, one-step (pretraining) or multi-step (the held-back task)")
	n := fs.Int("n", 1000, "problems to generate")
	seed := fs.Uint64("seed", 1, "seed (equal flags give equal problems)")
	corpus := fs.String("corpus", "", "write text documents into this directory (for carryon pretrain --corpus)")
	perDoc := fs.Int("per-doc", 20, "problems per document with --corpus")
	jsonl := fs.String("jsonl", "", "write question/answer JSONL to this file (repeated questions dropped)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if (*corpus == "") == (*jsonl == "") {
		return errors.New("give exactly one of --corpus and --jsonl")
	}
	ps, err := synth.Generate(synth.Family(*family), *n, *seed)
	if err != nil {
		return err
	}
	if *corpus != "" {
		if err := synth.WriteCorpus(*corpus, *family, ps, *perDoc); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %d %s problems to %s\n", len(ps), *family, *corpus)
		return nil
	}
	f, err := os.Create(*jsonl)
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	k, err := synth.WriteJSONL(f, ps)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %d distinct %s problems (of %d) to %s\n", k, *family, len(ps), *jsonl)
	return nil
}
