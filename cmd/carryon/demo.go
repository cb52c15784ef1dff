package main

import (
	"context"
	"io"
	"log/slog"

	"carryon/internal/demo"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "[flags]", stderr)
	dir := fs.String("dir", "", "keep the run's files here (default: a temporary directory, removed afterwards)")
	steps := fs.Int("steps", 300, "training steps")
	examples := fs.Int("examples", 600, "generated word problems in the data set")
	verbose := fs.Bool("v", false, "also print the peers' logs")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	o := demo.Options{Dir: *dir, Steps: *steps, Examples: *examples, Out: stdout}
	if *verbose {
		o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return demo.Run(ctx, o)
}
