package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"carryon/coordinator"
	"carryon/dataset"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"

	"github.com/ipfs/go-cid"
)

func runCoordinator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("coordinator", "--model PATH|default --data FILE|default [flags]", stderr)
	sf := addSwarmFlags(fs, "/ip4/0.0.0.0/tcp/4001")
	job := addJobFlags(fs)
	chunkSeqs := fs.Int("chunk-seqs", 16, "sequences per chunk leased to a node")
	boost := fs.Bool("boost", false, "train a boosting stage on top of the latest published version")
	minNodes := fs.Int("min-nodes", 1, "nodes to wait for before leasing")
	ckptEvery := fs.Int("checkpoint-every", 50, "save the training state every so many steps (and at the end); a restarted run resumes from it; negative: never")
	serve := fs.Bool("serve", false, "keep serving the adaptor after publishing, until interrupted")
	httpAddr := fs.String("http", "", "serve the dashboard, its JSON API and /metrics on ADDR (e.g. "+defaultDashboardAddr+", which 'carryon status' reads by default); empty: none")
	config := fs.String("config", "", "a JSON job file (coordinator.JobFile); its settings replace --model, --data, --cache and the job flags")
	logger := logFlags(fs, stderr)
	device, closeDevice, err := job.parse(fs, args)
	if err != nil {
		return err
	}
	defer closeDevice()
	log := logger()
	dcfg := dataset.Config{SeqLen: *job.seqLen, SeqsPerChunk: *chunkSeqs}
	var jf *coordinator.JobFile
	if *config != "" {
		var err error
		if jf, err = coordinator.LoadJobFile(*config); err != nil {
			return err
		}
		*job.model, *job.data, dcfg = jf.Base, jf.Data, jf.DataConfig()
		if jf.Cache != "" {
			*job.cache = jf.Cache
		}
	}
	m, err := model.Open(*job.model, job.openOptions())
	if err != nil {
		return err
	}
	base, tok := m.Base, m.Tokenizer
	defer base.Close()
	ds, err := job.readData(ctx, base, tok, dcfg, stdout)
	if err != nil {
		return err
	}
	sf.defaultIdentity = filepath.Join(*job.cache, swarm.IdentityFile)
	sf.rosterFile = filepath.Join(*job.cache, rosterFileName)
	j, err := sf.join(ctx, nil)
	if err != nil {
		return err
	}
	defer j.close()
	if err := j.followRoster(ctx, stdout, sf.rosterFile, log); err != nil {
		return err
	}
	cfg := job.config(base)
	cfg.MinNodes, cfg.Logger, cfg.Train.CheckpointEvery = *minNodes, log, *ckptEvery
	if jf != nil {
		cfg = jf.Config()
		cfg.CacheDir, cfg.Logger = *job.cache, log
		*job.steps = cmp.Or(cfg.Train.Steps, 200) // the progress lines' spacing; 200 is TrainConfig's default
	}
	cfg.BaseName, cfg.Train.Device = m.Name, device
	mix, closeMix, err := job.openMix(tok)
	if err != nil {
		return err
	}
	defer closeMix()
	cfg.Mix = mix
	frames := announceFrames(ctx, j, log)
	if frames != nil {
		cfg.OnCached = frames.cached
	}
	c, err := coordinator.New(j.h, j.topics, base, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := announceHeld(ctx, c, frames); err != nil {
		return err
	}
	dash, err := startDashboard(ctx, c, *httpAddr, stdout)
	if err != nil {
		return err
	}
	defer dash.Close()
	fmt.Fprintf(stdout, "coordinator %s in swarm %s, base %s\n", j.h.ID(), j.name, base.WeightsHash)
	j.printPeer(stdout)
	go j.reach(ctx, stdout, swarm.Reach.Coordinator)
	if base.Numerics() == "" {
		fmt.Fprintf(stdout, "nodes must serve base %s (%s) and offer codec %s\n", m.Name, base.WeightsHash, cfg.Codec)
	} else {
		fmt.Fprintf(stdout, "nodes must serve base %s (%s, numerics %s: %s) and offer codec %s\n", m.Name, base.WeightsHash, base.Numerics(), base.EmbedHash(), cfg.Codec)
	}
	fmt.Fprintf(stdout, "data: %d training and %d validation chunks\n", len(ds.Train), len(ds.Val))
	vs, stored, err := c.Versions()
	if err != nil {
		return err
	}
	if n := len(vs); n > 0 {
		served := 0
		for i, ok := range stored {
			if ok {
				served++
				provideInBackground(ctx, j, vs[i].CID, log)
			}
		}
		fmt.Fprintf(stdout, "serving %d of %d stored adaptor versions; latest %s (step %d)\n", served, n, vs[n-1].CID, vs[n-1].Step)
	}
	embedBar, trainBar := newCounter(stdout, "embed", "chunks"), newCounter(stdout, "train", "steps")
	waiting := &waitLine{w: stdout, need: cfg.MinNodes}
	hooks := coordinator.Hooks{
		Collecting: func(cached, total int) {
			fmt.Fprintf(stdout, "cached %d of %d chunks\n", cached, total)
		},
		Resumed: func(step int) {
			fmt.Fprintf(stdout, "resumed training at step %d\n", step)
		},
		Checkpoint: func(step int) {
			fmt.Fprintf(stdout, "checkpoint: step %d\n", step)
		},
		Progress: func(p coordinator.Progress) {
			waiting.update(p)
			embedBar.set(p.Done, p.Total)
		},
		Step: func(s coordinator.StepInfo) {
			trainBar.set(s.Step, *job.steps)
			if s.Step == *job.steps {
				fmt.Fprintf(stdout, "train: step %d loss %.4f\n", s.Step, s.Loss)
			}
		},
		Eval: func(e coordinator.EvalInfo) {
			fmt.Fprintf(stdout, "eval: step %d val loss %.4f (base %.4f)%s\n", e.Step, e.Loss, e.BaseLoss, restoredNote(e))
		},
	}
	if hooks.Parent, err = storeParent(ctx, c.Store(), *job.parent); err != nil {
		return err
	}
	if *boost && hooks.Parent == "" {
		latest, ok, err := c.LatestVersion()
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("--boost: no published version to build on yet")
		}
		hooks.Parent = latest.CID
		fmt.Fprintf(stdout, "boosting on top of %s (step %d)\n", latest.CID, latest.Step)
	}
	_, v, err := c.Run(ctx, ds, dash.Hooks(hooks))
	dash.Finish(err)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "adaptor %s\n", v.CID)
	provideInBackground(ctx, j, v.CID.String(), log)
	if *serve {
		fmt.Fprintf(stdout, "serving adaptors until interrupted\n")
		<-ctx.Done()
	} else {
		time.Sleep(500 * time.Millisecond) // let the announcement leave
	}
	return nil
}

// provideInBackground announces in the DHT that this host serves the
// adaptor (a no-op without a DHT), without holding up the command. Each CID
// is announced once per process (the DHT re-announces it); a swarm without
// DHT peers (a private LAN swarm) is said once, as information: peers there
// fetch adaptors from the hosts they know.
func provideInBackground(ctx context.Context, j *joined, cidStr string, log *slog.Logger) {
	c, err := protocol.ParseCID(cidStr)
	if err != nil {
		log.Warn("stored version has a bad CID", "adaptor", cidStr, "err", err)
		return
	}
	j.provMu.Lock()
	if j.provided == nil {
		j.provided = map[string]bool{}
	}
	again := j.provided[c.String()]
	j.provided[c.String()] = true
	j.provMu.Unlock()
	if again {
		return
	}
	go func() {
		err := j.provide(ctx, c)
		switch {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, swarm.ErrNoDHTPeers):
			j.noDHTNote.Do(func() {
				log.Info("no DHT peers: adaptors are not announced in the DHT; peers fetch them from this host by its address")
			})
		default:
			log.Warn("adaptor not announced in the DHT", "adaptor", cidStr, "err", err)
		}
	}()
}

// frameAnnouncer announces cached embedding frames in the DHT: the
// frames a cache already holds when a coordinator or trainer starts
// (announceHeld) and each it caches later (cached, its Config.OnCached).
// One goroutine announces them one at a time, new frames before held ones,
// so that a large cache or a fast collection does not start thousands of
// DHT walks at once. When the queue of new frames is full a frame is not
// announced (said once); without DHT peers the held frames are not
// announced (said once). Bitswap still serves every frame to each
// connected peer, and `carryon train --from-swarm` names this host.
type frameAnnouncer struct {
	j     *joined
	log   *slog.Logger
	added chan cid.Cid
	held  chan []cid.Cid
	full  sync.Once
}

// announceFrames starts a frameAnnouncer until ctx ends, or returns nil
// when j runs no DHT.
func announceFrames(ctx context.Context, j *joined, log *slog.Logger) *frameAnnouncer {
	if j == nil || j.disc == nil || j.disc.DHT() == nil {
		return nil
	}
	a := &frameAnnouncer{j: j, log: log, added: make(chan cid.Cid, 4096), held: make(chan []cid.Cid, 1)}
	go a.run(ctx)
	return a
}

// cached queues a newly cached frame (never blocks).
func (a *frameAnnouncer) cached(c cid.Cid) {
	select {
	case a.added <- c:
	default:
		a.full.Do(func() {
			a.log.Info("DHT announcements of cached embeddings fall behind; the rest are served to connected peers only")
		})
	}
}

// announceHeld queues the frames the cache held at start (call once).
func (a *frameAnnouncer) announceHeld(held []cid.Cid) {
	if len(held) == 0 {
		return
	}
	a.log.Info("announcing the cached embedding frames held here in the DHT", "frames", len(held))
	a.held <- held
}

func (a *frameAnnouncer) run(ctx context.Context) {
	var held []cid.Cid
	announced, total := 0, 0
	for {
		var c cid.Cid
		fromHeld := false
		if len(held) == 0 {
			select {
			case <-ctx.Done():
				return
			case held = <-a.held:
				total = len(held)
				continue
			case c = <-a.added:
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case c = <-a.added: // new frames first
			default:
				c, held, fromHeld = held[0], held[1:], true
			}
		}
		err := a.j.provide(ctx, c)
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			if fromHeld {
				announced++
			}
		case errors.Is(err, swarm.ErrNoDHTPeers):
			a.j.noDHTNote.Do(func() {
				a.log.Info("no DHT peers: adaptors and cached embeddings are not announced in the DHT; peers fetch them from this host by its address")
			})
			if fromHeld {
				held = nil // each would wait for DHT peers in turn; the DHT re-announces what it was given
			}
		default:
			a.log.Debug("cached embeddings not announced in the DHT", "cid", c.String(), "err", err)
		}
		if fromHeld && len(held) == 0 {
			a.log.Info("cached embedding frames held at start announced in the DHT", "frames", announced, "of", total)
		}
	}
}

// announceHeld hands the frames c's cache holds to frames (nil: no DHT).
func announceHeld(ctx context.Context, c *coordinator.Coordinator, frames *frameAnnouncer) error {
	if frames == nil {
		return nil
	}
	held, err := c.HeldFrames(ctx)
	if err != nil {
		return err
	}
	frames.announceHeld(held)
	return nil
}
