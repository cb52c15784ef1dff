package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"carryon/coordinator"
	"carryon/model"
)

func runCache(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("cache", "ls|gc [--cache DIR] [--older-than DURATION] [--dry-run]\n\n"+
		"  ls  every cached embedding frame: its key (base, codec, layer, chunk), CID, bytes, age, whose result\n"+
		"  gc  remove blocks that no index entry and no pinned adaptor refers to (and, with --older-than,\n"+
		"      the entries indexed longer ago, with their blocks); it says what it removed, with sizes;\n"+
		"      with --dry-run it says the same and removes nothing", stderr)
	cache := fs.String("cache", defaultCoordinatorCache(), "the coordinator's cache directory (its --cache); no coordinator may be running on it")
	olderThan := fs.Duration("older-than", 0, "gc: also remove index entries indexed longer ago than this (e.g. 720h), and their blocks; 0: keep every entry")
	dryRun := fs.Bool("dry-run", false, "gc: list what would be removed (entries, blocks, sizes) and remove nothing")
	if len(args) == 0 {
		fs.Usage()
		return errors.New("cache: want ls or gc")
	}
	verb := args[0]
	if verb == "-h" || verb == "--help" {
		fs.Usage()
		return nil
	}
	if verb != "ls" && verb != "gc" {
		fs.Usage()
		return fmt.Errorf("cache %q: want ls or gc", verb)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("cache %s takes no arguments, got %q", verb, fs.Args())
	}
	if verb == "ls" && *olderThan != 0 {
		return errors.New("--older-than is a flag of 'cache gc'")
	}
	if verb == "ls" && *dryRun {
		return errors.New("--dry-run is a flag of 'cache gc'")
	}
	d, err := coordinator.OpenCacheDir(*cache)
	if err != nil {
		return err
	}
	defer d.Close()
	if verb == "ls" {
		return cacheLs(ctx, d, *cache, stdout)
	}
	return cacheGC(ctx, d, coordinator.GCOptions{OlderThan: *olderThan, DryRun: *dryRun}, stdout)
}

func cacheLs(ctx context.Context, d *coordinator.CacheDir, dir string, stdout io.Writer) error {
	items, err := d.List(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BASE\tCODEC\tLAYER\tCHUNK\tCID\tBYTES\tAGE\tFROM")
	var total int64
	missing := 0
	for _, it := range items {
		id := it.CID
		switch {
		case id == "":
			id = "(old file, imported at the next start)"
		case !it.Stored:
			id += " (blocks missing)"
			missing++
		}
		from := "computed here"
		if it.Node != "" {
			from = shortHash(it.Node)
			if it.Verified {
				from += " (verified)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", shortHash(it.Key.Base), it.Key.Codec, layerName(it.Key.Layer),
			shortHash(it.Key.Chunk), id, it.Bytes, age(now.Sub(it.Time)), from)
		total += it.Bytes
	}
	tw.Flush()
	blocks, bytes, err := d.StoreUsage(ctx)
	if err != nil {
		return err
	}
	pins, err := d.Pins()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d cached frames, %s; block store %s: %d blocks, %s, %d pinned adaptors\n",
		len(items), mib(total), coordinator.StoreDir(dir), blocks, mib(bytes), len(pins))
	if missing > 0 {
		fmt.Fprintf(stdout, "%d frames have blocks missing: 'carryon cache gc' drops their entries (their chunks are computed again)\n", missing)
	}
	return nil
}

func cacheGC(ctx context.Context, d *coordinator.CacheDir, opt coordinator.GCOptions, stdout io.Writer) error {
	rep, err := d.GC(ctx, opt)
	if err != nil {
		return err
	}
	removed := "removed"
	if rep.DryRun {
		removed = "would remove"
	}
	now := time.Now()
	for _, it := range rep.Expired {
		fmt.Fprintf(stdout, "%s entry %s %s %s %s -> %s (%d bytes, %s old, over --older-than %v)\n", removed, shortHash(it.Key.Base),
			it.Key.Codec, layerName(it.Key.Layer), shortHash(it.Key.Chunk), it.CID, it.Bytes, age(now.Sub(it.Time)), opt.OlderThan)
	}
	for _, it := range rep.Broken {
		fmt.Fprintf(stdout, "%s entry %s %s %s %s -> %s: blocks missing from the store (the chunk is computed again)\n", removed,
			shortHash(it.Key.Base), it.Key.Codec, layerName(it.Key.Layer), shortHash(it.Key.Chunk), it.CID)
	}
	for _, g := range rep.Blocks.RemovedBlocks {
		fmt.Fprintf(stdout, "%s block %s (%d bytes)\n", removed, g.CID, g.Size)
	}
	fmt.Fprintf(stdout, "%s %d index entries and %d blocks (%s) that nothing refers to; kept %d blocks (%s): every indexed frame and pinned adaptor\n",
		removed, len(rep.Expired)+len(rep.Broken), rep.Blocks.Removed, mib(rep.Blocks.RemovedBytes), rep.Blocks.Kept, mib(rep.Blocks.KeptBytes))
	if rep.DryRun {
		fmt.Fprintf(stdout, "dry run: nothing was removed\n")
	}
	return nil
}

func layerName(l int) string {
	if l == model.FinalLayer {
		return "final"
	}
	return strconv.Itoa(l)
}

func mib(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }

// age says a duration the way a listing reads it: 42s, 7m, 5h, 3d.
func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
