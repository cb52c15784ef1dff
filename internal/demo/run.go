package demo

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/carryon"
	"carryon/coordinator"
	"carryon/dataset"
	"carryon/model"
	"carryon/node"
	"carryon/protocol"
	"carryon/swarm"
)

// Options configure a demo run. Zero values mean the documented default.
type Options struct {
	// Dir holds the run's files (base, cache, adaptors). Default: a fresh
	// temporary directory, removed afterwards.
	Dir string
	// Examples is the number of generated problems. Default 600.
	Examples int
	// Steps is the number of training steps. Default 300.
	Steps int
	// Out receives the demo's report. Default os.Stdout.
	Out io.Writer
	// Logger receives lifecycle logs. Default: discard.
	Logger *slog.Logger
}

// peerHost is one in-process swarm member.
type peerHost struct {
	h      host.Host
	topics *swarm.Topics
}

// Run starts a coordinator and two volunteer nodes as separate libp2p hosts
// on loopback in a fresh private swarm, runs the whole loop on the embedded
// defaults, and pulls the published adaptor back by CID from a third host.
func Run(ctx context.Context, o Options) (err error) {
	o.Out = cmp.Or[io.Writer](o.Out, os.Stdout)
	o.Logger = cmp.Or(o.Logger, slog.New(slog.NewTextHandler(io.Discard, nil)))
	o.Examples = cmp.Or(o.Examples, 600)
	o.Steps = cmp.Or(o.Steps, 300)
	if o.Dir == "" {
		if o.Dir, err = os.MkdirTemp("", "carryon-demo-*"); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		defer os.RemoveAll(o.Dir)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := func(format string, args ...any) { fmt.Fprintf(o.Out, format+"\n", args...) }
	start := time.Now()

	m, err := model.Open("default", model.OpenOptions{CacheDir: o.Dir})
	if err != nil {
		return err
	}
	base, tok, name := m.Base, m.Tokenizer, m.Name
	defer base.Close()
	bc := base.Config
	p("base:   %s — a tiny %s model pretrained by carryon on the Brown corpus (%.1fM parameters, dim %d, %d layers, vocab %d);",
		name, bc.Arch, float64(bc.NumParams())/1e6, bc.Dim, bc.Layers, bc.Vocab)
	p("        a real run uses a real base such as Qwen2.5 (--model DIR)")
	p("        weights hash %s", base.WeightsHash)

	_, psk, err := protocol.NewSwarmPSK()
	if err != nil {
		return err
	}
	swarmName := protocol.SwarmName(psk)
	peers := make([]*peerHost, 4) // coordinator, node 1, node 2, puller
	for i := range peers {
		h, err := swarm.NewHost(swarm.HostConfig{PSK: psk})
		if err != nil {
			return err
		}
		defer h.Close()
		peers[i] = &peerHost{h: h}
	}
	coordH := peers[0].h
	for i, ph := range peers {
		if i > 0 {
			if err := ph.h.Connect(ctx, peer.AddrInfo{ID: coordH.ID(), Addrs: coordH.Addrs()}); err != nil {
				return fmt.Errorf("demo: connect to the coordinator: %w", err)
			}
		}
		ps, err := swarm.NewPubSub(ctx, ph.h)
		if err != nil {
			return err
		}
		if ph.topics, err = swarm.JoinTopics(ps, swarmName, []peer.ID{coordH.ID()}); err != nil {
			return err
		}
	}
	p("swarm:  private swarm %s (fresh pre-shared key), coordinator %s, nodes %s and %s, all on loopback",
		swarmName, shortID(coordH.ID()), shortID(peers[1].h.ID()), shortID(peers[2].h.ID()))

	for _, ph := range peers[1:3] {
		cfg := node.DefaultLocalConfig()
		cfg.Logger = o.Logger
		n, err := node.New(ph.h, ph.topics, []node.Base{node.Serve(base, name)}, cfg)
		if err != nil {
			return err
		}
		if err := n.Start(ctx); err != nil {
			return err
		}
		defer n.Close()
	}

	ds, err := dataset.Read(ctx, bytes.NewReader(DefaultData(o.Examples)), tok,
		dataset.Config{SeqLen: 128, SeqsPerChunk: 16})
	if err != nil {
		return err
	}
	p("data:   %d generated arithmetic word problems → %d training + %d validation chunks (loss on answer tokens only)",
		o.Examples, len(ds.Train), len(ds.Val))

	ccfg := coordinator.Config{CacheDir: filepath.Join(o.Dir, "coordinator"), Codec: "q8", MinNodes: 2, Logger: o.Logger,
		Train: coordinator.TrainConfig{Steps: o.Steps, BatchSeqs: 8, EvalEvery: max(1, o.Steps/3)}}
	ccfg.Train.Optim.LR = 3e-3
	coord, err := coordinator.New(coordH, peers[0].topics, base, ccfg)
	if err != nil {
		return err
	}
	defer coord.Close()

	// The puller listens for announcements before anything is published.
	sub, err := peers[3].topics.Adaptors.Subscribe()
	if err != nil {
		return err
	}
	defer sub.Cancel()

	hooks := coordinator.Hooks{
		Progress: func(pr coordinator.Progress) {
			p("embed:  %3d/%d chunks done, %d leased, %d nodes, %d tokens", pr.Done, pr.Total, pr.Leased, pr.Nodes, pr.Tokens)
		},
		Step: func(s coordinator.StepInfo) {
			if s.Step == 1 || s.Step%max(1, o.Steps/10) == 0 {
				p("train:  step %4d  loss %.4f  lr %.2e  |g| %.3f", s.Step, s.Loss, s.LR, s.GradNorm)
			}
		},
		Eval: func(e coordinator.EvalInfo) {
			p("eval:   step %4d  held-out answer loss %.4f with the carry-on, %.4f base alone", e.Step, e.Loss, e.BaseLoss)
		},
	}
	res, ver, err := coord.Run(ctx, ds, hooks)
	if err != nil {
		return err
	}
	first, last := res.Steps[0].Loss, res.Steps[len(res.Steps)-1].Loss
	p("train:  loss %.4f → %.4f over %d steps", first, last, len(res.Steps))
	p("adaptor: %s (%d bytes, signed by the coordinator, gossiped)", ver.CID, ver.Size)

	got, from, err := pull(ctx, peers[3], sub, ver, filepath.Join(o.Dir, "puller"))
	if err != nil {
		return err
	}
	co, meta, err := carryon.Unmarshal(got)
	if err != nil {
		return fmt.Errorf("demo: pulled adaptor does not load: %w", err)
	}
	if meta.BaseHash != base.WeightsHash {
		return errors.New("demo: pulled adaptor was made for another base")
	}
	p("pull:   a third host heard the announcement, fetched %s from %s, re-hashed it: match; %d parameters, step %d",
		ver.CID, shortID(from), len(co.Params), meta.Step)
	if !(last < first) {
		return fmt.Errorf("demo: training loss did not fall (%.4f → %.4f)", first, last)
	}
	p("done in %.1fs", time.Since(start).Seconds())
	return nil
}

// pull waits for the announcement of ver on the puller's subscription and
// fetches the adaptor by CID over bitswap from the peers that have it,
// into a block store in dir.
func pull(ctx context.Context, ph *peerHost, sub *pubsub.Subscription, ver *coordinator.Version, dir string) ([]byte, peer.ID, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		ann, _, err := swarm.NextGossip[*protocol.AdaptorAnnounce](ctx, sub)
		if err != nil {
			return nil, "", fmt.Errorf("demo: no adaptor announcement arrived: %w", err)
		}
		if ann.CID != ver.CID.String() {
			continue
		}
		c, err := protocol.ParseCID(ann.CID)
		if err != nil {
			return nil, "", err
		}
		blocks, err := swarm.OpenBlocks(dir)
		if err != nil {
			return nil, "", err
		}
		defer blocks.Close()
		x, err := swarm.NewExchange(ph.h, blocks, swarm.ExchangeConfig{})
		if err != nil {
			return nil, "", err
		}
		defer x.Close()
		st, err := x.Fetch(ctx, c, swarm.Limits{MaxSize: ann.Size})
		if err != nil {
			return nil, "", err
		}
		data, err := blocks.Get(ctx, c, ann.Size)
		var from peer.ID
		for p := range st.Peers {
			from = p
		}
		return data, from, err
	}
}

func shortID(id peer.ID) string {
	s := id.String()
	if len(s) > 10 {
		return "…" + s[len(s)-8:]
	}
	return s
}
