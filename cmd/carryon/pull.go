package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/carryon"
	"carryon/protocol"
	"carryon/swarm"
)

func init() {
	register("pull", "fetch an adaptor by CID from peers that have it, verifying its hash", runPull)
}

func runPull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pull", "CID [--from ADDR[,ADDR...] | --bootstrap ADDR] [--out FILE]", stderr)
	sf := addSwarmFlags(fs, "/ip4/127.0.0.1/tcp/0")
	from := fs.String("from", "", "comma-separated multiaddrs (with /p2p/ID) of peers that have the adaptor (empty: find them through the DHT, via --bootstrap)")
	out := fs.String("out", "", "where to write the adaptor (default: CID.safetensors)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	maxSize := fs.Int64("max-size", 1<<30, "refuse adaptors larger than this many bytes")
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
	providers, err := parsePeers(*from)
	if err != nil {
		return err
	}
	if len(providers) == 0 {
		if *sf.bootstrap == "" {
			return fmt.Errorf("pull needs --from (peers that have the adaptor) or --bootstrap (peers to search the DHT through)")
		}
		switch *sf.dht {
		case "off":
			return fmt.Errorf("pull without --from searches the DHT: --dht off leaves no way to find providers")
		case "auto":
			*sf.dht = "client" // a short-lived process answers no queries
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	j, err := sf.join(ctx, nil)
	if err != nil {
		return err
	}
	defer j.close()
	var (
		data []byte
		src  peer.ID
	)
	if len(providers) == 0 {
		data, src, err = j.disc.FetchByCID(ctx, c, *maxSize, 0)
	} else {
		var ids []peer.ID
		for _, ai := range providers {
			j.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
			ids = append(ids, ai.ID)
		}
		data, src, err = swarm.FetchFromAny(ctx, j.h, ids, c, *maxSize)
	}
	if err != nil {
		return err
	}
	co, meta, err := carryon.Unmarshal(data)
	if err != nil {
		return fmt.Errorf("adaptor %s: %w", c, err)
	}
	path := *out
	if path == "" {
		path = c.String() + ".safetensors"
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pulled %s from %s: %d bytes, hash verified, %d parameters, base %s, step %d -> %s\n",
		c, src, len(data), len(co.Params), meta.BaseHash, meta.Step, path)
	return nil
}
