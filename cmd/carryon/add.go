package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"carryon/swarm"
)

func runAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("add", "FILE... [--store DIR]", stderr)
	store := fs.String("store", defaultStoreDir(), "block store to add to (the coordinator's, served by 'carryon coordinator' and 'carryon serve'; a node serves the store of its --store flag)")
	onlyHash := fs.Bool("only-hash", false, "print the CIDs without storing anything")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("add needs at least one file")
	}
	var blocks *swarm.Blocks
	if !*onlyHash {
		var err error
		if blocks, err = swarm.OpenBlocks(*store); err != nil {
			return err
		}
		defer blocks.Close()
	}
	for _, path := range fs.Args() {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		if *onlyHash {
			data, err := io.ReadAll(f)
			f.Close()
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s %s\n", swarm.CIDOf(data), path)
			continue
		}
		c, err := blocks.Add(ctx, f)
		f.Close()
		if err == nil {
			err = blocks.Pin(ctx, c, "added "+path)
		}
		if err != nil {
			return fmt.Errorf("add %s: %w", path, err)
		}
		fmt.Fprintf(stdout, "%s %s\n", c, path)
	}
	return nil
}
