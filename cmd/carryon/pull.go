package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/ipfs/go-cid"

	"carryon/carryon"
	"carryon/internal/atomicfile"
	"carryon/protocol"
	"carryon/swarm"
)

func runPull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pull", "CID [--from ADDR[,ADDR...] | --bootstrap ADDR] [--out FILE [--force]]", stderr)
	sf := addSwarmFlags(fs, "/ip4/127.0.0.1/tcp/0")
	from := fs.String("from", "", "comma-separated multiaddrs (with /p2p/ID) of peers that have the adaptor (empty: find them through the DHT, via --bootstrap)")
	out := fs.String("out", "", "where to write the adaptor (default: CID.safetensors)")
	store := fs.String("store", defaultStoreDir(), "block store the adaptor is kept (pinned) in, so this peer serves it on")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	maxSize := fs.Int64("max-size", 1<<30, "refuse files larger than this many bytes")
	force := fs.Bool("force", false, "overwrite an existing --out file")
	check := fs.Bool("check", true, "decode the file as a carryon adaptor and say what it is (--check=false for any file)")
	// Flags may come before or after the CID.
	var cidArg string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cidArg, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cidArg == "" && fs.NArg() > 0 {
		cidArg = fs.Arg(0)
	}
	if cidArg == "" {
		fs.Usage()
		return fmt.Errorf("a CID is required")
	}
	c, err := protocol.ParseCID(cidArg)
	if err != nil {
		return err
	}
	path := *out
	if path == "" {
		path = c.String() + ".safetensors"
	}
	if _, err := os.Stat(path); err == nil && !*force {
		return fmt.Errorf("%s exists (use --force to overwrite)", path)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	blocks, err := swarm.OpenBlocks(*store)
	if err != nil {
		return err
	}
	defer blocks.Close()
	src := "the local store " + *store
	if !blocks.Has(ctx, c) {
		if src, err = pullInto(ctx, sf, *from, blocks, c, *maxSize); err != nil {
			return err
		}
	}
	if err := blocks.Pin(ctx, c, "pulled"); err != nil {
		return err
	}
	n, err := writeFromStore(ctx, blocks, c, path, *maxSize)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pulled %s from %s: %d bytes, every block hash verified -> %s\n", c, src, n, path)
	if *check {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		co, meta, err := carryon.Unmarshal(data)
		if err != nil {
			fmt.Fprintf(stdout, "note: %s is not a carryon adaptor: %v\n", c, err)
			return nil
		}
		fmt.Fprintf(stdout, "adaptor: %d parameters, base %s, step %d\n", len(co.Params), meta.BaseHash, meta.Step)
	}
	return nil
}

// pullInto joins the swarm and fetches the file c into blocks over bitswap,
// from the --from peers or the providers the DHT names; it describes the
// peers the blocks came from.
func pullInto(ctx context.Context, sf *swarmFlags, from string, blocks *swarm.Blocks, c cid.Cid, maxSize int64) (string, error) {
	providers, err := parsePeers(from)
	if err != nil {
		return "", err
	}
	if len(providers) == 0 {
		if *sf.bootstrap == "" {
			return "", fmt.Errorf("pull needs --from (peers that have the adaptor) or --bootstrap (peers to search the DHT through)")
		}
		switch *sf.dht {
		case "off":
			return "", fmt.Errorf("pull without --from searches the DHT: --dht off leaves no way to find providers")
		case "auto":
			*sf.dht = "client" // a short-lived process answers no queries
		}
	}
	j, err := sf.join(ctx, nil)
	if err != nil {
		return "", err
	}
	defer j.close()
	x, err := j.exchange(blocks)
	if err != nil {
		return "", err
	}
	defer x.Close()
	if err := connectAll(ctx, j.h, providers); err != nil {
		return "", err
	}
	st, err := x.Fetch(ctx, c, swarm.Limits{MaxSize: maxSize})
	if err != nil {
		if hint := protocol.OldRawCIDHint(c); hint != "" {
			return "", fmt.Errorf("%w (%s)", err, hint)
		}
		return "", err
	}
	var parts []string
	for p, n := range st.Peers {
		parts = append(parts, fmt.Sprintf("%s (%d blocks)", p, n))
	}
	sort.Strings(parts)
	mibs := float64(st.Bytes) / (1 << 20) / st.Elapsed.Seconds()
	return fmt.Sprintf("%s in %.2fs (%.1f MiB/s)", strings.Join(parts, ", "), st.Elapsed.Seconds(), mibs), nil
}

// writeFromStore writes the file c to path atomically (internal/atomicfile),
// so path holds either the whole file or what it held before.
func writeFromStore(ctx context.Context, blocks *swarm.Blocks, c cid.Cid, path string, maxSize int64) (int64, error) {
	var n int64
	err := atomicfile.WriteFunc(path, 0o644, func(w io.Writer) error {
		var err error
		n, err = blocks.WriteTo(ctx, c, w, maxSize)
		return err
	})
	return n, err
}
