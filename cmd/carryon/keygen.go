package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"carryon/protocol"
)

func runKeygen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keygen", "[--out FILE]", stderr)
	out := fs.String("out", "swarm.key", "where to write the key (\"-\" for standard output)")
	force := fs.Bool("force", false, "overwrite an existing file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	key, err := protocol.NewSwarmKey()
	if err != nil {
		return err
	}
	if *out == "-" {
		_, err := stdout.Write(key)
		return err
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if *force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(*out, flags, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists (use --force to overwrite)", *out)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote swarm key %s (share it only with your swarm's members)\n", *out)
	return nil
}
