package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"carryon/coordinator"
	"carryon/dataset"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
)

func runTrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("train", "--model PATH|default --data FILE|default --out ADAPTOR.safetensors [flags]", stderr)
	jf := addJobFlags(fs)
	out := fs.String("out", "", "where to write the adaptor")
	seed := fs.Uint64("seed", 1, "initialisation and batch-order seed")
	fromSwarm := fs.String("from-swarm", "", "comma-separated multiaddrs (with /p2p/ID) of coordinators whose embedding cache holds this job (same base, data, codec, layers): fetch the cached embeddings by CID over bitswap instead of computing them; what they lack is computed here")
	verify := fs.Int("verify", 1, "with --from-swarm: fetched chunks to compute again here and compare (0: none)")
	sf := addSwarmFlags(fs, "/ip4/0.0.0.0/tcp/0")
	logger := logFlags(fs, stderr)
	device, closeDevice, err := jf.parse(fs, args, "out")
	if err != nil {
		return err
	}
	defer closeDevice()
	m, err := model.Open(*jf.model, jf.openOptions())
	if err != nil {
		return err
	}
	base, tok := m.Base, m.Tokenizer
	defer base.Close()
	ds, err := jf.readData(ctx, base, tok, dataset.Config{SeqLen: *jf.seqLen}, stdout)
	if err != nil {
		return err
	}
	cfg := jf.config(base)
	log := logger()
	cfg.Logger, cfg.Train.Seed, cfg.Train.Device = log, *seed, device
	mix, closeMix, err := jf.openMix(tok)
	if err != nil {
		return err
	}
	defer closeMix()
	cfg.Mix = mix
	peers, err := parsePeers(*fromSwarm)
	if err != nil {
		return fmt.Errorf("--from-swarm: %w", err)
	}
	var h host.Host // nil: nothing leaves this process
	var frames *frameAnnouncer
	if len(peers) > 0 {
		if *sf.dht == "auto" {
			*sf.dht = "off" // the peers are named: nothing to look up
		}
		j, err := sf.join(ctx, nil)
		if err != nil {
			return err
		}
		defer j.close()
		if err := connectAll(ctx, j.h, peers); err != nil {
			return fmt.Errorf("--from-swarm: %w", err)
		}
		h = j.h
		if frames = announceFrames(ctx, j, log); frames != nil { // --dht server or client: announce the cache to the swarm while training
			cfg.OnCached = frames.cached
		}
	}
	c, err := coordinator.New(h, nil, base, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := announceHeld(ctx, c, frames); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "base %s, data: %d training and %d validation chunks\n", shortHash(base.WeightsHash), len(ds.Train), len(ds.Val))
	for _, ai := range peers {
		fetchBar := newCounter(stdout, "fetch", "chunks")
		rep, err := c.FetchCached(ctx, ds, coordinator.FetchConfig{From: ai.ID, Verify: cmp.Or(*verify, -1)}, func(r coordinator.FetchReport) {
			fetchBar.set(r.Fetched, r.Chunks-r.Cached-r.Missing)
		})
		if err != nil {
			return fmt.Errorf("--from-swarm %s: %w", ai.ID, err)
		}
		fmt.Fprintf(stdout, "fetched %d chunks (%d tokens, %s) by CID from %s in %.2fs: %.0f tokens/s; %d computed again here and matched; %d not held there, %d already cached\n",
			rep.Fetched, rep.Tokens, mib(rep.Bytes), ai.ID, rep.Elapsed.Seconds(), rep.TokensPerSec(), rep.Verified, rep.Missing, rep.Cached)
	}
	embedBar, trainBar := newCounter(stdout, "embed", "chunks"), newCounter(stdout, "train", "steps")
	var computed coordinator.LocalProgress
	start := time.Now()
	err = c.CollectLocal(ctx, ds, nil, func(p coordinator.LocalProgress) { embedBar.set(p.Done, p.Total); computed = p })
	if err != nil {
		return err
	}
	if computed.Computed > 0 {
		secs := time.Since(start).Seconds()
		fmt.Fprintf(stdout, "computed %d chunks (%d tokens) here in %.2fs: %.0f tokens/s\n", computed.Computed, computed.Tokens, secs, float64(computed.Tokens)/secs)
	}
	parentCID, err := storeParent(ctx, c.Store(), *jf.parent)
	if err != nil {
		return err
	}
	res, err := c.Train(ctx, ds, coordinator.Hooks{
		Parent: parentCID,
		Step: func(s coordinator.StepInfo) {
			trainBar.set(s.Step, *jf.steps)
			if s.Step == *jf.steps {
				fmt.Fprintf(stdout, "train: step %d loss %.4f lr %.2e grad-norm %.3f %.0f tok/s\n", s.Step, s.Loss, s.LR, s.GradNorm, s.TokensPerSec)
			}
		},
		Resumed: func(step int) {
			fmt.Fprintf(stdout, "resumed training at step %d (the checkpoint in --cache)\n", step)
		},
		Eval: func(e coordinator.EvalInfo) {
			fmt.Fprintf(stdout, "eval: step %d val loss %.4f (base %.4f) over %d tokens%s\n", e.Step, e.Loss, e.BaseLoss, e.Tokens, restoredNote(e))
		},
	})
	if err != nil {
		return err
	}
	blob, err := res.CarryOn.Marshal(res.Meta)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, blob, 0o644); err != nil {
		return err
	}
	id, err := c.Store().AddBytes(ctx, blob)
	if err != nil {
		return err
	}
	if err := c.Store().Pin(ctx, id, "trained adaptor"); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "adaptor %s (%d parameters, %d bytes) -> %s\n", id, len(res.CarryOn.Params), len(blob), *out)
	switch {
	case len(ds.Val) == 0:
		fmt.Fprintf(stdout, "kept the last step: the data has no validation split to choose a checkpoint or alpha on\n")
	case cfg.Train.KeepBest:
		fmt.Fprintf(stdout, "kept step %d of %d (the lowest validation loss; --keep-best=false keeps the last)\n", res.Best, *jf.steps)
	}
	if len(cfg.Train.AlphaGrid) > 0 && len(ds.Val) > 0 {
		fmt.Fprintf(stdout, "alpha %g (chosen on validation from %v)\n", res.CarryOn.Config.Alpha, cfg.Train.AlphaGrid)
	}
	for _, k := range []string{"train_loss", "val_loss", "val_base_loss"} {
		if v, ok := res.Meta.Metrics[k]; ok {
			fmt.Fprintf(stdout, "%s %.4f\n", k, v)
		}
	}
	return nil
}

// restoredNote marks a validation pass read back from a checkpoint.
func restoredNote(e coordinator.EvalInfo) string {
	if e.Restored {
		return ", from the checkpoint"
	}
	return ""
}

// storeParent resolves a --parent flag: a file is put into the store (and
// its CID returned), anything else must be a CID already there.
func storeParent(ctx context.Context, store *swarm.Blocks, spec string) (string, error) {
	if spec == "" {
		return "", nil
	}
	if data, err := os.ReadFile(spec); err == nil {
		id, err := store.AddBytes(ctx, data)
		if err == nil {
			err = store.Pin(ctx, id, "parent adaptor")
		}
		if err != nil {
			return "", fmt.Errorf("--parent %s: %w", spec, err)
		}
		return id.String(), nil
	}
	id, err := protocol.ParseCID(spec)
	if err != nil {
		return "", fmt.Errorf("--parent %q is neither a readable file nor a CID: %w", spec, err)
	}
	if !store.Has(ctx, id) {
		if hint := protocol.OldRawCIDHint(id); hint != "" {
			return "", fmt.Errorf("--parent %s is not in the store %s (%s)", spec, store.Dir(), hint)
		}
		return "", fmt.Errorf("--parent %s is not in the store %s (fetch it with 'carryon pull')", spec, store.Dir())
	}
	return id.String(), nil
}
