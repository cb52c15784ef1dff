package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"

	"carryon/carryon"
	"carryon/internal/serve"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", "--model PATH|default [--adaptor [NAME=]FILE|CID[,...]] [--http ADDR] [flags]", stderr)
	modelFlag := addModelFlag(fs)
	adaptors := fs.String("adaptor", "", "adaptors to load at start, comma-separated: a file or a CID (looked up in --store, then pulled from the swarm), optionally NAME=... to give it a short model id; a boosting stage's parent must come before it")
	store := fs.String("store", defaultStoreDir(), "adaptor store: CIDs are looked up here and pulled adaptors kept here")
	alpha := fs.String("alpha", "", "α of requests without carryon_alpha (empty: each adaptor's own, from its config)")
	addr := fs.String("http", defaultServeAddr, "HTTP listen address (bound before the model loads; GET /health says \"loading\" until it is ready)")
	workers := fs.Int("workers", 1, "generations run at once (the rest wait in a queue)")
	queue := fs.Int("queue", serve.DefaultMaxQueue, "requests that may wait for a worker; more get 503")
	maxTokens := fs.Int("max-tokens", 256, "max_tokens of requests without one")
	maxContext := fs.Int("max-context", 0, "longest prompt + completion in tokens (0: the base's max_position_embeddings)")
	bridge := addBridgeFlag(fs)
	mixFlag := addMixFlag(fs)
	onDemand := fs.Bool("on-demand", true, "load adaptors that requests name by CID (from --store, then the swarm when --from or --bootstrap is set)")
	maxOnDemand := fs.Int("max-on-demand", 8, "on-demand adaptors kept loaded (least recently used dropped first)")
	sf := addSwarmFlags(fs, "/ip4/127.0.0.1/tcp/0")
	from := fs.String("from", "", "comma-separated multiaddrs (with /p2p/ID) of peers to pull adaptors from (empty: find them through the DHT, via --bootstrap)")
	pullTimeout := fs.Duration("pull-timeout", time.Minute, "give up pulling one adaptor after this long")
	maxSize := fs.Int64("max-size", 1<<30, "refuse adaptors larger than this many bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg := serve.Config{MaxTokens: *maxTokens, MaxContext: *maxContext, Workers: *workers, MaxQueue: *queue,
		MaxOnDemand: *maxOnDemand, Bridge: *bridge}
	if *alpha != "" {
		a, err := strconv.ParseFloat(*alpha, 32)
		if err != nil {
			return fmt.Errorf("--alpha %q: %w", *alpha, err)
		}
		a32 := float32(a)
		cfg.Alpha = &a32
	}
	// Bind first: a port in use fails now, not after the model has loaded.
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("serve: --http %s: %w", *addr, err)
	}
	var gate serve.Gate
	hs := &http.Server{Handler: &gate, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	var stopOnce sync.Once
	stopHTTP := func() {
		stopOnce.Do(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := hs.Shutdown(sctx); err != nil {
				hs.Close()
			}
		})
	}
	defer stopHTTP()
	fmt.Fprintf(stdout, "listening on http://%s (loading the model)\n", ln.Addr())

	m, err := model.Open(*modelFlag, model.OpenOptions{})
	if err != nil {
		return err
	}
	base, tok, name := m.Base, m.Tokenizer, m.Name
	defer base.Close()
	cfg.Base, cfg.Tokenizer = base, tok
	mix, closeMix, err := openMixBases(*mixFlag, *modelFlag, tok, model.LoadOptions{})
	if err != nil {
		return err
	}
	defer closeMix()
	cfg.Mix = mix

	blocks, err := swarm.OpenBlocks(*store)
	if err != nil {
		return err
	}
	defer blocks.Close()
	var x *swarm.Exchange
	if *from != "" || *sf.bootstrap != "" {
		var closeSwarm func()
		x, closeSwarm, err = swarmExchange(ctx, sf, *from, blocks, stdout)
		if err != nil {
			return err
		}
		defer closeSwarm()
	}
	inner := serve.FromStore(blocks, x, *maxSize)
	fetch := func(ctx context.Context, c cid.Cid) ([]byte, error) {
		ctx, cancel := context.WithTimeout(ctx, *pullTimeout)
		defer cancel()
		had := blocks.Has(ctx, c)
		data, err := inner(ctx, c)
		if err == nil && !had {
			fmt.Fprintf(stdout, "pulled adaptor %s (%d bytes, every block hash verified)\n", c, len(data))
		}
		return data, err
	}
	if *onDemand {
		cfg.Fetch = fetch
	}
	srv, err := serve.New(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	var started []*carryon.Model // the adaptors given at start
	for _, spec := range splitList(*adaptors) {
		short, ref, ok := strings.Cut(spec, "=")
		if !ok {
			short, ref = "", spec
		}
		data, err := os.ReadFile(ref)
		if err != nil {
			c, cerr := protocol.ParseCID(ref)
			if cerr != nil {
				return fmt.Errorf("adaptor %s: neither a readable file (%v) nor a CID", ref, err)
			}
			if data, err = fetch(ctx, c); err != nil {
				if errors.Is(err, swarm.ErrNotFound) && x == nil {
					return fmt.Errorf("adaptor %s is not in the store %s: pass --from or --bootstrap to pull it from the swarm", ref, *store)
				}
				return fmt.Errorf("adaptor %s: %w", ref, err)
			}
		}
		card, err := srv.Add(ctx, short, data)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "adaptor %s: %s (stages %d, step %d)\n", card.ID, card.CID, len(card.Stages), card.Step)
		if co, _, err := carryon.Unmarshal(data); err == nil { // Add decoded it
			started = append(started, co)
		}
	}
	if err := checkServedMix(mix, started, *onDemand, stdout); err != nil {
		return err
	}

	gate.Open(srv)
	fmt.Fprintf(stdout, "serving %s (base %s) on http://%s/v1 (models: %d; /health, /metrics)\n", name, shortHash(base.WeightsHash), ln.Addr(), len(srv.Models()))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopHTTP() // before the model closes
	fmt.Fprintf(stdout, "stopped after %d generated tokens\n", srv.Generated())
	return nil
}

// checkServedMix checks that each base of --mix is read by an adaptor
// loaded at start; with on-demand loading, one that is not may serve an
// adaptor loaded later, and is only noted.
func checkServedMix(mix []*model.Base, started []*carryon.Model, onDemand bool, stdout io.Writer) error {
	read := carryon.MixHashes(started)
	for _, m := range mix {
		if h := m.WeightsHash[:min(len(m.WeightsHash), carryon.MixHashLen)]; !slices.Contains(read, h) {
			if !onDemand {
				return fmt.Errorf("--mix: base %s is read by none of the adaptors given (and --on-demand=false loads no others)", h)
			}
			fmt.Fprintf(stdout, "mixed base %s: read by none of the adaptors given; kept for adaptors loaded on demand\n", h)
		}
	}
	return nil
}

// The default HTTP addresses: `carryon serve` and the coordinator's
// dashboard (`carryon coordinator --http`, read by `carryon status`) differ,
// so that both run on one machine with their defaults.
const (
	defaultServeAddr     = "127.0.0.1:8080"
	defaultDashboardAddr = "127.0.0.1:8081"
)

// swarmExchange joins the swarm and starts bitswap over blocks: adaptors
// are fetched from the --from peers (connected at once) or the providers the
// DHT names, and every adaptor in blocks is served to the swarm.
func swarmExchange(ctx context.Context, sf *swarmFlags, from string, blocks *swarm.Blocks, stdout io.Writer) (*swarm.Exchange, func(), error) {
	providers, err := parsePeers(from)
	if err != nil {
		return nil, nil, err
	}
	if len(providers) == 0 {
		switch *sf.dht {
		case "off":
			return nil, nil, errors.New("without --from, adaptors are found through the DHT: --dht off leaves no way to find them")
		case "auto":
			*sf.dht = "client"
		}
	}
	j, err := sf.join(ctx, nil)
	if err != nil {
		return nil, nil, err
	}
	x, err := j.exchange(blocks)
	if err != nil {
		j.close()
		return nil, nil, err
	}
	closeSwarm := func() { x.Close(); j.close() }
	fmt.Fprintf(stdout, "joined swarm %s as %s\n", j.name, j.h.ID())
	for _, ai := range providers {
		j.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, 24*time.Hour)
	}
	if err := connectAll(ctx, j.h, providers); err != nil {
		closeSwarm()
		return nil, nil, err
	}
	return x, closeSwarm, nil
}
