package main

import (
	"context"
	"io"

	"carryon/internal/buildinfo"
)

func init() {
	register("version", "print version, commit, Go version, CPU features and whether CUDA is built in", runVersion)
}

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	return buildinfo.Get().Write(stdout)
}
