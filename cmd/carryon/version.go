package main

import (
	"context"
	"io"

	"carryon/internal/buildinfo"
)

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return buildinfo.Get().Write(stdout)
}
