package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"

	"carryon/dataset"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
	"carryon/tensor"
)

// Coordinator leases chunks of a data set to volunteer nodes, verifies a
// sample of their results, caches their bridged embeddings, trains the
// carry-on on the cache and publishes each adaptor version.
//
// Collect's scheduler is a single-owner event loop (after raft's run()):
// one goroutine owns the chunk and node tables; lease goroutines, the
// advert subscription and the network's disconnect notifications talk to
// it over channels. Status publishes a copy of its state.
type Coordinator struct {
	cfg      Config
	h        host.Host
	topics   *swarm.Topics
	base     *model.Base
	cache    *Cache
	store    *swarm.Blocks
	exchange *swarm.Exchange // nil without a host
	codec    tensor.Codec
	log      *slog.Logger

	status atomic.Pointer[Status]
	data   atomic.Pointer[dataset.Report] // of the data set of the latest Collect
	// state is the durable store (store.go): the cache's index, node
	// records (trust carries from job to job and across restarts),
	// versions, checkpoints.
	state *stateStore
	// offerCh carries result offers to the running Collect (nil when none
	// runs; offers are then only answered).
	offerMu  sync.Mutex
	offerCh  chan offerEv
	offerJob embedJob
	// storeHook, when set (tests), is called after each cache write of a
	// chunk's layers, from the goroutine that wrote them.
	storeHook func(chunkID string)
}

// New builds a coordinator for base on h. topics may be nil, in which case
// Collect cannot discover nodes (Train and Publish still work).
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
	for i, m := range cfg.Mix {
		mc := m.Base.Config
		switch {
		case m.Base.WeightsHash == base.WeightsHash:
			return nil, fmt.Errorf("coordinator.New: Mix[%d] is the coordinator's own base (list its layers in Config.Layers)", i)
		case mc.Vocab != base.Config.Vocab:
			return nil, fmt.Errorf("coordinator.New: Mix[%d]: base %s has a vocabulary of %d tokens, this job's base %d: a mixture needs one tokenizer for every base",
				i, short(m.Base.WeightsHash), mc.Vocab, base.Config.Vocab)
		}
		for _, l := range m.Layers[1:] {
			if l > mc.Layers {
				return nil, fmt.Errorf("coordinator.New: Mix[%d]: layer %d beyond the base's %d layers", i, l, mc.Layers)
			}
		}
	}
	codec, _ := tensor.ParseCodec(cfg.Codec)
	store, err := swarm.OpenBlocks(StoreDir(cfg.CacheDir))
	if err != nil {
		return nil, fmt.Errorf("coordinator.New: %w", err)
	}
	state, fresh, err := openState(filepath.Join(cfg.CacheDir, "state.db"), cfg.CacheDir, cfg.CommitBatch, cfg.CommitDelay)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("coordinator.New: %w", err)
	}
	c := &Coordinator{cfg: cfg, h: h, topics: topics, base: base, cache: &Cache{blocks: store, state: state}, store: store, codec: codec, state: state}
	if h == nil { // local use (CollectLocal, Train): Collect and Publish need a host
		c.log = cfg.Logger.With("component", "coordinator")
	} else {
		c.log = cfg.Logger.With("component", "coordinator", "peer", h.ID().String())
		if c.exchange, err = swarm.NewExchange(h, store, swarm.ExchangeConfig{OnPenalty: func(p peer.ID, err error) {
			c.log.Warn("peer penalised", "peer", p.String(), "err", err)
		}}); err != nil {
			store.Close()
			state.close()
			return nil, fmt.Errorf("coordinator.New: %w", err)
		}
		h.SetStreamHandler(protocol.OfferProtocol, c.handleOffer)
		h.SetStreamHandler(protocol.CacheProtocol, c.handleCacheQuery)
	}
	if fresh {
		if err := c.migrate(); err != nil {
			c.Close()
			return nil, fmt.Errorf("coordinator.New: %w", err)
		}
	}
	if err := c.importLegacy(); err != nil {
		c.Close()
		return nil, fmt.Errorf("coordinator.New: %w", err)
	}
	c.status.Store(&Status{})
	return c, nil
}

// StoreDir is the block store (adaptors and cached embeddings, by CID)
// under a cache directory.
func StoreDir(cacheDir string) string { return cacheDir + "/ipfs" }

// Close stops serving adaptors and closes the block store and the state
// store (after its pending writes).
func (c *Coordinator) Close() error {
	var errs []error
	if c.h != nil {
		c.h.RemoveStreamHandler(protocol.OfferProtocol)
		c.h.RemoveStreamHandler(protocol.CacheProtocol)
	}
	if c.exchange != nil {
		errs = append(errs, c.exchange.Close())
	}
	errs = append(errs, c.store.Close(), c.state.close())
	return errors.Join(errs...)
}

// Store is where adaptor versions are kept (and served from, over
// bitswap, when the coordinator has a host).
func (c *Coordinator) Store() *swarm.Blocks { return c.store }

// Exchange is the coordinator's bitswap exchange, nil without a host.
func (c *Coordinator) Exchange() *swarm.Exchange { return c.exchange }

// job is the primary job on ds: the coordinator's own base.
func (c *Coordinator) job(ds *dataset.Set) embedJob {
	id := c.cfg.JobID
	if id == "" {
		h := sha256.Sum256(fmt.Appendf(nil, "%s|%s|%s|%v", c.base.EmbedHash(), ds.Hash, c.codec, c.cfg.Layers))
		id = hex.EncodeToString(h[:8])
	}
	j := c.primary()
	j.ID = id
	return j
}

// primary is the coordinator's own base's job, without its ID (what the
// cache keys need).
func (c *Coordinator) primary() embedJob {
	return embedJob{Base: c.base.EmbedHash(), Dim: c.base.Config.Dim, Layers: c.cfg.Layers, Codec: c.codec, model: c.base}
}

// jobs are every job on ds: the primary one, then one per mixed base
// (Config.Mix), each named by a hash of its own base, codec and layers
// (and of Config.JobID when that is set).
func (c *Coordinator) jobs(ds *dataset.Set) []embedJob {
	out := []embedJob{c.job(ds)}
	for _, m := range c.mixJobs() {
		h := sha256.Sum256(fmt.Appendf(nil, "%s|%s|%s|%v|%s", m.Base, ds.Hash, m.Codec, m.Layers, c.cfg.JobID))
		m.ID = hex.EncodeToString(h[:8])
		out = append(out, m)
	}
	return out
}

// mixJobs are the mixed bases' jobs, without IDs.
func (c *Coordinator) mixJobs() []embedJob {
	var out []embedJob
	for _, m := range c.cfg.Mix {
		codec, _ := tensor.ParseCodec(m.Codec) // Validate parsed it
		out = append(out, embedJob{Base: m.Base.EmbedHash(), Dim: m.Base.Config.Dim, Layers: m.Layers, Codec: codec, model: m.Base})
	}
	return out
}

// allJobs are the primary job and the mixed ones, without IDs: every
// source's cache keys.
func (c *Coordinator) allJobs() []embedJob { return append([]embedJob{c.primary()}, c.mixJobs()...) }

// Status returns the latest snapshot; safe for concurrent use.
func (c *Coordinator) Status() Status {
	s := *c.status.Load()
	s.Nodes = append([]NodeStatus(nil), s.Nodes...)
	if r := c.data.Load(); r != nil {
		s.Job.Data = *r
	}
	// The snapshot is taken by the collecting loop; after it (while
	// training) a node that went away must not still count as eligible.
	for i := range s.Nodes {
		if id, err := peer.Decode(s.Nodes[i].Peer); err == nil && s.Nodes[i].Eligible && c.h != nil &&
			c.h.Network().Connectedness(id) != network.Connected {
			s.Nodes[i].Eligible = false
		}
	}
	return s
}

// Collect makes sure every chunk of ds has its bridged embeddings in the
// cache, leasing the missing ones to eligible nodes and verifying a sample
// (see verify.go). Cached chunks are not recomputed, so a restarted
// coordinator resumes where it stopped.
//
// With mixed bases (Config.Mix) it collects one job after the other: the
// primary base's, then each mixed base's, from the nodes that serve it.
func (c *Coordinator) Collect(ctx context.Context, ds *dataset.Set, progress func(Progress)) error {
	if c.topics == nil {
		return errors.New("coordinator.Collect: no topics to discover nodes on")
	}
	if err := c.checkFits(ds); err != nil {
		return fmt.Errorf("coordinator.Collect: %w", err)
	}
	rep := ds.Report
	rep.Why = maps.Clone(rep.Why)
	c.data.Store(&rep)
	for _, job := range c.jobs(ds) {
		if err := c.collect(ctx, ds, job, progress); err != nil {
			return err
		}
	}
	return nil
}

// collect is Collect of one job.
func (c *Coordinator) collect(ctx context.Context, ds *dataset.Set, job embedJob, progress func(Progress)) error {
	l := &loop{c: c, job: job, progress: progress,
		events: make(chan any, 64), disconnects: make(chan peer.ID, 256), byID: map[string]*chunkState{},
		offers: make(chan offerEv, 64)}
	l.sched = newSched(c.cfg, func(p peer.ID) bool { return c.h.Network().Connectedness(p) == network.Connected })
	seed := sha256.Sum256([]byte(job.ID))
	l.rng = rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:]), l.cfg.Train.Seed))
	var distinct []*dataset.Chunk
	for _, ch := range ds.All() {
		if l.byID[ch.ID] != nil {
			continue
		}
		cs := &chunkState{ch: ch}
		l.byID[ch.ID] = cs
		l.chunks = append(l.chunks, cs)
		distinct = append(distinct, ch)
	}
	cached, err := c.cachedAll(job, distinct)
	if err != nil {
		return fmt.Errorf("coordinator.Collect: %w", err)
	}
	for i, cs := range l.chunks {
		ch := cs.ch
		if cached[i] {
			cs.phase = phDone
			l.cachedAtStart++
			continue
		}
		l.baseTokens += int64(ch.Tokens())
		l.pending.pushBack(cs)
	}
	if n := l.pending.len(); n > 0 {
		l.unit = float64(l.baseTokens) / float64(n)
	}
	l.total = len(l.chunks)
	l.done = l.cachedAtStart
	if err := c.state.write(func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bJobs), []byte(job.ID), JobRecord{ID: job.ID, Base: job.Base, Data: ds.Hash,
			Codec: job.Codec.String(), Layers: job.Layers, Total: l.total, UnixMilli: time.Now().UnixMilli()})
	}); err != nil {
		return fmt.Errorf("coordinator.Collect: %w", err)
	}
	// Leases in flight when the last run stopped: their nodes may hold
	// the results, so those chunks go back to them first.
	hints, err := c.takeLeases()
	if err != nil {
		return fmt.Errorf("coordinator.Collect: %w", err)
	}
	for id, chunks := range hints {
		l.offered(id, chunks)
	}
	c.log.Info("collecting embeddings", "job", job.ID, "chunks", l.total, "cached", l.cachedAtStart,
		"codec", job.Codec.String(), "layers", job.Layers, "verify_fraction", l.cfg.VerifyFraction)
	if l.done == l.total { // everything cached: the collection is over
		l.finished = true
		l.publish(true)
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
	l.ann.joins = make(chan struct{}, 1)
	if c.topics.Control != nil {
		go watchControlJoins(ctx, c.topics.Control, l.ann.joins)
	}
	nb := &network.NotifyBundle{DisconnectedF: func(_ network.Network, conn network.Conn) {
		select {
		case l.disconnects <- conn.RemotePeer():
		default: // the tick re-checks connectedness anyway
		}
	}}
	c.h.Network().Notify(nb)
	defer c.h.Network().StopNotify(nb)
	c.offerMu.Lock()
	c.offerCh, c.offerJob = l.offers, job
	c.offerMu.Unlock()
	defer func() {
		c.offerMu.Lock()
		c.offerCh = nil
		c.offerMu.Unlock()
	}()
	return l.run(ctx, adverts)
}

// readAdverts forwards validated adverts (the topic validator already
// checked their form and sender) to the loop.
func readAdverts(ctx context.Context, sub *pubsub.Subscription, self peer.ID, out chan<- *protocol.Advert) {
	for {
		a, from, err := swarm.NextGossip[*protocol.Advert](ctx, sub)
		if err != nil {
			return
		}
		if from == self {
			continue
		}
		select {
		case out <- a:
		case <-ctx.Done():
			return
		}
	}
}

// checkFits rejects a data set whose sequences exceed the base's context,
// before any node is asked (every node would fail on them).
func (c *Coordinator) checkFits(ds *dataset.Set) error {
	limit, of := c.base.Config.MaxPos, "the base's"
	for _, m := range c.cfg.Mix {
		if m.Base.Config.MaxPos < limit {
			limit, of = m.Base.Config.MaxPos, "the mixed base "+short(m.Base.WeightsHash)+"'s"
		}
	}
	for _, ch := range ds.All() {
		for _, s := range ch.Seqs {
			if len(s.Tokens) > limit {
				return fmt.Errorf("a sequence of %d tokens exceeds %s context of %d (use a sequence length of at most %d)", len(s.Tokens), of, limit, limit)
			}
		}
	}
	return nil
}
