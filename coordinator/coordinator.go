package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
	"carryon/tensor"
)

// Coordinator leases chunks of a data set to volunteer nodes, caches their
// bridged embeddings, trains the carry-on on the cache and publishes each
// adaptor version.
//
// Collect's scheduler is a single-owner event loop (after raft's run()):
// one goroutine owns the chunk and node tables; RPC goroutines and the
// advert subscription talk to it over channels.
type Coordinator struct {
	cfg       Config
	h         host.Host
	topics    *swarm.Topics
	base      *model.Base
	cache     *Cache
	store     swarm.Store
	codec     tensor.Codec
	log       *slog.Logger
	stopBlobs func()
}

// New builds a coordinator for base on h. topics may be nil, in which case
// nodes are only those given to AddNode... (none): Collect needs topics.
func New(h host.Host, topics *swarm.Topics, base *model.Base, cfg Config) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	for _, l := range cfg.Layers[1:] {
		if l > base.Config.Layers {
			return nil, fmt.Errorf("coordinator.New: layer %d beyond the base's %d layers", l, base.Config.Layers)
		}
	}
	codec, _ := tensor.ParseCodec(cfg.Codec)
	cache, err := OpenCache(cfg.CacheDir + "/embeddings")
	if err != nil {
		return nil, err
	}
	store, err := swarm.NewDiskStore(cfg.CacheDir + "/adaptors")
	if err != nil {
		return nil, fmt.Errorf("coordinator.New: %w", err)
	}
	c := &Coordinator{cfg: cfg, h: h, topics: topics, base: base, cache: cache, store: store, codec: codec}
	c.log = cfg.Logger.With("component", "coordinator", "peer", h.ID().String())
	c.stopBlobs = swarm.ServeBlobs(h, store)
	return c, nil
}

// Close stops serving adaptors.
func (c *Coordinator) Close() error {
	c.stopBlobs()
	return nil
}

// Store is where adaptor versions are kept (and served from).
func (c *Coordinator) Store() swarm.Store { return c.store }

func (c *Coordinator) job(ds *Dataset) embedJob {
	id := c.cfg.JobID
	if id == "" {
		h := sha256.Sum256(fmt.Appendf(nil, "%s|%s|%s|%v", c.base.WeightsHash, ds.Hash, c.codec, c.cfg.Layers))
		id = hex.EncodeToString(h[:8])
	}
	return embedJob{ID: id, Base: c.base.WeightsHash, Dim: c.base.Config.Dim, Layers: c.cfg.Layers, Codec: c.codec}
}

// cached reports whether every layer of ch is in the cache.
func (c *Coordinator) cached(ch *Chunk) bool {
	for _, l := range c.cfg.Layers {
		if !c.cache.Has(c.key(l, ch)) {
			return false
		}
	}
	return true
}

func (c *Coordinator) key(layer int, ch *Chunk) Key {
	return Key{Base: c.base.WeightsHash, Codec: c.codec.String(), Layer: layer, Chunk: ch.ID}
}

// nodeState is the scheduler's view of one volunteer.
type nodeState struct {
	id       peer.ID
	advert   *protocol.Advert
	seen     time.Time
	inflight int
	done     int
	failures int
	banned   bool
	backoff  time.Time // no new lease before this
}

// leaseResult is what an RPC goroutine reports to the loop.
type leaseResult struct {
	node   peer.ID
	chunk  *Chunk
	tokens int
	dur    time.Duration
	err    error
}

// Progress is a snapshot of Collect, for logs and status displays.
type Progress struct {
	Done, Leased, Pending, Total int
	Nodes                        int
	Tokens                       int64
}

// Collect makes sure every chunk of ds has its bridged embeddings in the
// cache, leasing the missing ones to eligible nodes. Cached chunks are not
// recomputed, so a restarted coordinator resumes where it stopped.
func (c *Coordinator) Collect(ctx context.Context, ds *Dataset, progress func(Progress)) error {
	if c.topics == nil {
		return errors.New("coordinator.Collect: no topics to discover nodes on")
	}
	job := c.job(ds)
	var pending []*Chunk
	all := ds.All()
	seen := map[string]bool{}
	for _, ch := range all {
		if !seen[ch.ID] && !c.cached(ch) {
			pending = append(pending, ch)
		}
		seen[ch.ID] = true
	}
	total := len(seen)
	c.log.Info("collecting embeddings", "job", job.ID, "chunks", total, "cached", total-len(pending),
		"codec", job.Codec.String(), "layers", job.Layers)
	if len(pending) == 0 {
		return nil
	}
	sub, err := c.topics.Nodes.Subscribe()
	if err != nil {
		return fmt.Errorf("coordinator.Collect: subscribe: %w", err)
	}
	defer sub.Cancel()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	adverts := make(chan *protocol.Advert, 64)
	go readAdverts(ctx, sub, c.h.ID(), adverts)

	l := &loop{c: c, job: job, pending: pending, total: total, nodes: map[peer.ID]*nodeState{},
		attempts: map[string]int{}, results: make(chan leaseResult), progress: progress}
	return l.run(ctx, adverts)
}

// readAdverts forwards validated adverts (the topic validator already
// checked their form and sender) to the loop.
func readAdverts(ctx context.Context, sub *pubsub.Subscription, self peer.ID, out chan<- *protocol.Advert) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if msg.GetFrom() == self {
			continue
		}
		m, err := protocol.Unmarshal(msg.Data)
		a, ok := m.(*protocol.Advert)
		if err != nil || !ok {
			continue
		}
		select {
		case out <- a:
		case <-ctx.Done():
			return
		}
	}
}

// loop is the state of one Collect, owned by its run goroutine.
type loop struct {
	c        *Coordinator
	job      embedJob
	pending  []*Chunk
	total    int
	done     int
	inflight int
	tokens   int64
	nodes    map[peer.ID]*nodeState
	attempts map[string]int
	results  chan leaseResult
	progress func(Progress)
}

func (l *loop) run(ctx context.Context, adverts <-chan *protocol.Advert) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Now()
	var fatal error
	for l.done < l.total {
		if fatal != nil && l.inflight == 0 {
			return fatal
		}
		if fatal == nil {
			l.assign(ctx)
		}
		select {
		case <-ctx.Done():
			for l.inflight > 0 { // let RPC goroutines finish (they see ctx too)
				<-l.results
				l.inflight--
			}
			return fmt.Errorf("coordinator.Collect: %w", ctx.Err())
		case a := <-adverts:
			l.observe(a)
		case r := <-l.results:
			if err := l.finish(r); err != nil && fatal == nil {
				fatal = err
			}
		case <-tick.C:
		}
		if l.progress != nil && (time.Since(lastReport) > time.Second || l.done == l.total) {
			lastReport = time.Now()
			l.progress(l.snapshot())
		}
	}
	return fatal
}

func (l *loop) snapshot() Progress {
	n := 0
	for _, s := range l.nodes {
		if l.eligible(s, time.Now()) {
			n++
		}
	}
	return Progress{Done: l.done, Leased: l.inflight, Pending: len(l.pending), Total: l.total, Nodes: n, Tokens: l.tokens}
}

// observe records an advert.
func (l *loop) observe(a *protocol.Advert) {
	id, err := peer.Decode(a.Peer)
	if err != nil {
		return
	}
	s := l.nodes[id]
	if s == nil {
		s = &nodeState{id: id}
		l.nodes[id] = s
	}
	first := s.advert == nil
	s.advert, s.seen = a, time.Now()
	if first && l.serves(a) {
		l.c.log.Info("node joined", "node", id.String(), "device", a.Device, "tokens_per_s", a.TokensPerSec)
	}
}

// serves reports whether the advert offers this job's base and codec.
func (l *loop) serves(a *protocol.Advert) bool {
	base := false
	for _, b := range a.Bases {
		base = base || (b.WeightsHash == l.job.Base && b.Dim == l.job.Dim)
	}
	codec := false
	for _, s := range a.Codecs {
		if cd, err := tensor.ParseCodec(s); err == nil && cd == l.job.Codec {
			codec = true
		}
	}
	return base && codec
}

func (l *loop) eligible(s *nodeState, now time.Time) bool {
	return !s.banned && s.advert != nil && now.Sub(s.seen) < l.c.cfg.NodeTTL && l.serves(s.advert) &&
		l.c.h.Network().Connectedness(s.id) == network.Connected
}

// assign leases pending chunks to eligible nodes with spare capacity,
// fastest measured nodes first.
func (l *loop) assign(ctx context.Context) {
	now := time.Now()
	var ready []*nodeState
	for _, s := range l.nodes {
		if l.eligible(s, now) && now.After(s.backoff) {
			ready = append(ready, s)
		}
	}
	if len(ready) < l.c.cfg.MinNodes && l.done == 0 && l.inflight == 0 {
		return
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].advert.TokensPerSec > ready[j].advert.TokensPerSec })
	for _, s := range ready {
		for s.inflight < l.c.cfg.LeasesPerNode && len(l.pending) > 0 {
			ch := l.pending[0]
			l.pending = l.pending[1:]
			s.inflight++
			l.inflight++
			go l.lease(ctx, s.id, ch)
		}
	}
}

// lease runs one chunk on one node and reports the outcome.
func (l *loop) lease(ctx context.Context, p peer.ID, ch *Chunk) {
	ctx, cancel := context.WithTimeout(ctx, l.c.cfg.LeaseTimeout)
	defer cancel()
	start := time.Now()
	_, _, err := embedChunk(ctx, l.c.h, p, l.job, ch, func(entries [][]Entry) error {
		for i, layer := range l.job.Layers {
			if err := l.c.cache.Put(l.c.key(layer, ch), entries[i]); err != nil {
				return err
			}
		}
		return nil
	})
	l.results <- leaseResult{node: p, chunk: ch, tokens: ch.Tokens(), dur: time.Since(start), err: err}
}

// finish applies one lease's outcome; it returns an error only when the
// whole job must stop.
func (l *loop) finish(r leaseResult) error {
	l.inflight--
	s := l.nodes[r.node]
	s.inflight--
	log := l.c.log.With("node", r.node.String(), "chunk", short(r.chunk.ID))
	if r.err == nil {
		s.done++
		l.done++
		l.tokens += int64(r.tokens)
		log.Debug("chunk done", "tokens", r.tokens, "ms", r.dur.Milliseconds())
		return nil
	}
	l.pending = append([]*Chunk{r.chunk}, l.pending...)
	l.attempts[r.chunk.ID]++
	s.failures++
	var perr *protocol.Error
	switch {
	case errors.Is(r.err, errBadResult):
		s.banned = true
		log.Warn("node returned a bad result; banned for this job", "err", r.err)
	case errors.As(r.err, &perr) && perr.Kind == protocol.KindOverloaded:
		s.backoff = time.Now().Add(time.Second)
		log.Debug("node overloaded", "err", r.err)
	case errors.As(r.err, &perr) && perr.Kind == protocol.KindModelMismatch:
		s.banned = true
		log.Warn("node does not serve the base it advertised; dropped", "err", r.err)
	default:
		s.backoff = time.Now().Add(500 * time.Millisecond)
		log.Warn("chunk failed; re-queued", "err", r.err, "attempt", l.attempts[r.chunk.ID])
	}
	if l.attempts[r.chunk.ID] >= l.c.cfg.MaxAttempts {
		return fmt.Errorf("coordinator.Collect: chunk %s failed %d times, last: %w", short(r.chunk.ID), l.attempts[r.chunk.ID], r.err)
	}
	return nil
}
