package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ipfs/go-cid"

	"carryon/cuda"
	"carryon/devmodel"
	"carryon/internal/service"
	"carryon/model"
	"carryon/node"
	"carryon/protocol"
	"carryon/swarm"
)

func runNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "status" || args[0] == "pause" || args[0] == "resume") {
		return runNodeCtl(ctx, args[0], args[1:], stdout, stderr)
	}
	fs := newFlags("node", "--model PATH|default --bootstrap ADDR [flags]  |  node status|pause|resume [--addr]", stderr)
	sf := addSwarmFlags(fs, "/ip4/0.0.0.0/tcp/0")
	modelFlag := addModelFlag(fs)
	exactBF16 := addExactBF16Flag(fs)
	device := fs.String("device", "cpu", "compute device: cpu, or cuda (GPU 0; needs a binary built with -tags cuda and --model DIR, a Hugging Face checkpoint)")
	codecs := fs.String("codecs", "q8,q4,q2,bf16", "bridge settings offered")
	jobs := fs.Int("jobs", 1, "embedding jobs run at once")
	advert := fs.Duration("advert-interval", node.DefaultInternetConfig().AdvertInterval, "how often to re-advertise")
	cacheDir := fs.String("cache", model.DefaultCacheDir(), "where the default model is kept")
	state := fs.String("state", filepath.Join(model.DefaultCacheDir(), "node"), "the node's state directory: its peer identity (identity.key), so the node keeps its peer ID across restarts; one running node per directory")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100); empty: none")
	store := fs.String("store", "", "block store of adaptors this node serves to the swarm (and to Kubo) over bitswap (default: ipfs/ in --state; a flatfs store is one process's: never the coordinator's or another node's)")
	pin := fs.String("pin", "", "comma-separated adaptor CIDs to fetch (if missing), keep and provide in the DHT, so they outlive the coordinator")
	pinFile := fs.String("pin-file", "", "a file of adaptor CIDs to keep like --pin, one per line (# starts a comment)")
	limits := addNodeLimitFlags(fs)
	logger := logFlags(fs, stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *limits.printService != "" {
		return printServiceFile(*limits.printService, args, stdout)
	}
	log := logger()
	pins, err := pinList(*pin, *pinFile)
	if err != nil {
		return err
	}
	base, closeBase, devName, err := openNodeBase(*device, *modelFlag, *cacheDir, *exactBF16)
	if err != nil {
		return err
	}
	defer closeBase()
	sf.defaultIdentity, sf.keepBootstrap = filepath.Join(*state, swarm.IdentityFile), true
	j, err := sf.join(ctx, nil)
	if err != nil {
		return err
	}
	defer j.close()
	if err := j.followRoster(ctx, stdout, "", log); err != nil {
		return err
	}
	if *store == "" {
		*store = filepath.Join(*state, "ipfs")
		// Nodes before this default kept their pins in the coordinator's
		// store: say where they went rather than stop serving them silently.
		if old := defaultStoreDir(); old != *store {
			if pins, _ := os.ReadDir(filepath.Join(old, "pins")); len(pins) > 0 {
				log.Warn("this node's block store is now in its --state directory; adaptors pinned in the old default store are not served unless pinned again (--pin) or --store names that store while no coordinator uses it",
					"store", *store, "old_store", old, "old_pins", len(pins))
			}
		}
	}
	blocks, err := swarm.OpenBlocks(*store)
	if err != nil {
		return err
	}
	defer blocks.Close()
	x, err := j.exchange(blocks)
	if err != nil {
		return err
	}
	defer x.Close()
	for _, c := range pins {
		go keepPinned(ctx, x, c, j.disc, log)
	}
	cfg := node.DefaultInternetConfig()
	if *advert <= 0 {
		return fmt.Errorf("--advert-interval %v: want a positive duration", *advert)
	}
	cfg.AdvertInterval = *advert
	cfg.Codecs, cfg.MaxJobs, cfg.Logger, cfg.Device = splitList(*codecs), *jobs, log, devName
	cfg.Bootstrap = j.boot
	conds, err := limits.apply(&cfg)
	if err != nil {
		return err
	}
	n, err := node.New(j.h, j.topics, []node.Base{base}, cfg)
	if err != nil {
		return err
	}
	if conds.Active() { // before Start: the first advert obeys the conditions
		if err := n.Govern(conds, node.SystemProbe()); err != nil {
			return fmt.Errorf("--schedule/--idle/--allow-battery: %w", err)
		}
	}
	log.Info("joined swarm", "swarm", j.name, "peer", j.h.ID().String(), "bootstrap_peers", len(j.boot))
	if err := n.Start(ctx); err != nil {
		return err
	}
	if err := serveNodeMetrics(ctx, n, *metricsAddr, stdout); err != nil {
		n.Close()
		return err
	}
	info := base.Info()
	fmt.Fprintf(stdout, "node %s in swarm %s serving %s (%s) on %s\n", j.h.ID(), j.name, info.Name, info.WeightsHash, devName)
	j.printPeer(stdout)
	serveNodeStatus(ctx, n, *limits.statusAddr, stdout) // after the "node ID" line that scripts read
	service.Started(ctx, n)                             // under a service manager: running; its Pause/Continue drive n
	j.reach(ctx, stdout, swarm.Reach.String)
	<-ctx.Done()
	st := n.Stats()
	log.Info("node stopping", "jobs", st.Jobs, "computed", st.Computed, "resent", st.Resent, "tokens", st.Tokens, "rejected", st.Rejected)
	return n.Close()
}

// pinList parses --pin and --pin-file into CIDs.
func pinList(list, file string) ([]cid.Cid, error) {
	specs := splitList(list)
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--pin-file: %w", err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			l, _, _ = strings.Cut(l, "#")
			if l = strings.TrimSpace(l); l != "" {
				specs = append(specs, l)
			}
		}
	}
	var out []cid.Cid
	for _, s := range specs {
		c, err := protocol.ParseCID(s)
		if err != nil {
			return nil, fmt.Errorf("pin %q: %w", s, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// openNodeBase opens the base a node serves on device ("cpu" or "cuda") and
// returns it with its closer and the device name for adverts ("cpu",
// "cuda:NVIDIA H200"). exactBF16 is --exact-bf16: on the GPU it keeps the
// matrices in float32 (devmodel.Options.F32), the exact products.
func openNodeBase(device, spec, cacheDir string, exactBF16 bool) (node.BatchBase, func() error, string, error) {
	switch device {
	case "cpu":
		m, err := model.Open(spec, model.OpenOptions{CacheDir: cacheDir, Load: model.LoadOptions{ExactBF16: exactBF16}})
		if err != nil {
			return nil, nil, "", err
		}
		return node.Serve(m.Base, m.Name), m.Base.Close, "cpu", nil
	case "cuda":
		if spec == "" || spec == "default" || strings.EqualFold(filepath.Ext(spec), ".gguf") {
			return nil, nil, "", fmt.Errorf("--device cuda: --model %q: give a Hugging Face checkpoint directory (config.json + safetensors); GGUF files and the tiny default base run on the CPU", spec)
		}
		be, closeBe, err := cuda.OpenBackend(0)
		if err != nil {
			return nil, nil, "", fmt.Errorf("--device cuda: %w", err)
		}
		b, err := devmodel.Load(be, spec, devmodel.Options{F32: exactBF16})
		if err != nil {
			closeBe()
			return nil, nil, "", err
		}
		closeAll := func() error { b.Close(); return closeBe() }
		return node.ServeDevice(b, filepath.Base(filepath.Clean(spec))), closeAll, be.Name(), nil
	}
	return nil, nil, "", fmt.Errorf("--device %q: want cpu or cuda", device)
}

// keepPinned makes the node keep and provide the pinned file c
// (swarm.Exchange.Keep), trying again with backoff (1 s doubling to a
// minute) until it succeeds or ctx ends: at start the node may not be
// connected to any peer that has c yet (the bootstrap peers are dialled in
// the background), and a provider may come later.
func keepPinned(ctx context.Context, x *swarm.Exchange, c cid.Cid, disc *swarm.Discovery, log *slog.Logger) {
	wait := time.Second
	for attempt := 1; ; attempt++ {
		err := x.Keep(ctx, c, swarm.Limits{}, disc)
		switch {
		case err == nil:
			log.Info("adaptor kept and provided", "adaptor", c.String())
			return
		case ctx.Err() != nil:
			return
		case errors.Is(err, swarm.ErrNoDHTPeers):
			log.Info("adaptor kept (pinned); no DHT peers to announce it to: peers fetch it from this node by its address", "adaptor", c.String())
			return
		case attempt == 3:
			log.Warn("adaptor not kept yet; still trying", "adaptor", c.String(), "err", err)
		default:
			log.Debug("adaptor not kept yet", "adaptor", c.String(), "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}
