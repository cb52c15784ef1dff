package coordinator

// The embedding cache shared across the swarm: a coordinator answers
// CacheQuery (which frames it holds, by CID) and serves the frames' blocks
// over bitswap; a trainer with the same base and data (FetchCached, `carryon
// train --from-swarm`) fetches them by CID instead of running the base's
// forward pass again.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"

	"carryon/dataset"
	"carryon/protocol"
	"carryon/swarm"
)

// cacheQueryTimeout bounds one CacheQuery stream's silence.
const cacheQueryTimeout = 30 * time.Second

// handleCacheQuery answers CacheQuery frames (protocol.CacheProtocol) from
// the state store's index until the asker closes the stream.
func (c *Coordinator) handleCacheQuery(s network.Stream) {
	defer s.Close()
	for {
		s.SetDeadline(time.Now().Add(cacheQueryTimeout))
		q, err := protocol.ReadExpect[*protocol.CacheQuery](s)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				s.Reset()
			}
			return
		}
		cids := make([]string, len(q.Chunks))
		err = c.state.view(func(tx *bolt.Tx) error {
			b := tx.Bucket(bChunks)
			for i, ch := range q.Chunks {
				if v := b.Get(keyBytes(Key{Base: q.Base, Codec: q.Codec, Layer: q.Layer, Chunk: ch})); v != nil {
					var r chunkRecord
					if json.Unmarshal(v, &r) == nil {
						cids[i] = r.CID
					}
				}
			}
			return nil
		})
		if err != nil {
			protocol.WriteFrame(s, protocol.Errorf(protocol.KindInternal, "cache index: %v", err))
			return
		}
		if err := protocol.WriteFrame(s, &protocol.CacheIndex{V: protocol.Version, CIDs: cids}); err != nil {
			s.Reset()
			return
		}
	}
}

// HeldFrames returns the CIDs of the cached frames this coordinator can
// serve (indexed, with their root block in the store), each once, in
// index order: what it announces in the DHT when it starts, besides each
// frame it caches later (Config.OnCached).
func (c *Coordinator) HeldFrames(ctx context.Context) ([]cid.Cid, error) {
	var ids []cid.Cid
	seen := map[cid.Cid]bool{}
	err := c.state.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bChunks).ForEach(func(_, v []byte) error {
			var r chunkRecord
			if json.Unmarshal(v, &r) != nil {
				return nil // cache ls and the index's readers report it
			}
			if id, err := cid.Decode(r.CID); err == nil && !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator.HeldFrames: %w", err)
	}
	held := ids[:0]
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("coordinator.HeldFrames: %w", err)
		}
		if c.store.Has(ctx, id) {
			held = append(held, id)
		}
	}
	return held, nil
}

// FetchConfig configures FetchCached.
type FetchConfig struct {
	// From is the peer asked for the index (CacheQuery); it must be
	// connected. The frames come over bitswap from it or any other peer
	// that has their blocks.
	From peer.ID
	// Parallel is how many frames are fetched at once. Default 8.
	Parallel int
	// Verify is how many fetched chunks (chosen at random) are computed
	// again here with the coordinator's base and compared with the fetched
	// frames as a second node's result would be (compareEntries); a
	// mismatch fails the fetch and indexes nothing. Default 1; negative
	// means none.
	Verify int
	// Idle gives up a frame when no block has arrived for this long.
	// Default 30 s.
	Idle time.Duration
}

// Validate checks the configuration.
func (f *FetchConfig) Validate() error {
	switch {
	case f.From == "":
		return errors.New("coordinator.FetchConfig.From: a peer is required")
	case f.Parallel < 0:
		return fmt.Errorf("coordinator.FetchConfig.Parallel: %d is negative", f.Parallel)
	case f.Idle < 0:
		return fmt.Errorf("coordinator.FetchConfig.Idle: %v is negative", f.Idle)
	}
	return nil
}

func (f FetchConfig) withDefaults() FetchConfig {
	if f.Parallel == 0 {
		f.Parallel = 8
	}
	if f.Verify == 0 {
		f.Verify = 1
	}
	if f.Idle == 0 {
		f.Idle = 30 * time.Second
	}
	return f
}

// FetchReport describes a FetchCached.
type FetchReport struct {
	Chunks   int           // distinct chunks of the data set
	Cached   int           // already in this cache before the call
	Fetched  int           // fetched from the swarm and indexed
	Missing  int           // not held by the peer (some layer missing): still to compute
	Verified int           // fetched chunks computed again here and compared
	Tokens   int64         // tokens of the fetched chunks
	Bytes    int64         // frame bytes fetched
	Elapsed  time.Duration // the whole call, the index queries included
}

// TokensPerSec is the fetch rate in tokens of training data per second.
func (r FetchReport) TokensPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Tokens) / r.Elapsed.Seconds()
}

// FetchCached fills this coordinator's cache for ds from another peer's:
// it asks cfg.From which frames of the missing chunks it holds
// (CacheQuery), fetches them by CID over bitswap (every block hashed to its
// CID, the file's size capped at what the chunk's shape allows before
// anything is fetched), checks each frame's shape against the chunk and
// the base, recomputes cfg.Verify chunks to compare, and indexes them as
// the coordinator's own. Chunks the peer does not hold are left for
// CollectLocal or Collect. progress (may be nil) is called after each
// fetched chunk.
func (c *Coordinator) FetchCached(ctx context.Context, ds *dataset.Set, cfg FetchConfig, progress func(FetchReport)) (FetchReport, error) {
	start := time.Now()
	var rep FetchReport
	if err := cfg.Validate(); err != nil {
		return rep, err
	}
	cfg = cfg.withDefaults()
	if c.exchange == nil {
		return rep, errors.New("coordinator.FetchCached: a coordinator without a host cannot fetch")
	}
	if err := c.checkFits(ds); err != nil {
		return rep, fmt.Errorf("coordinator.FetchCached: %w", err)
	}
	var distinct []*dataset.Chunk
	seen := map[string]bool{}
	for _, ch := range ds.All() {
		if !seen[ch.ID] {
			seen[ch.ID] = true
			distinct = append(distinct, ch)
		}
	}
	rep.Chunks = len(distinct)
	cached, err := c.cachedAll(c.primary(), distinct)
	if err != nil {
		return rep, fmt.Errorf("coordinator.FetchCached: %w", err)
	}
	var want []*dataset.Chunk
	for i, ch := range distinct {
		if cached[i] {
			rep.Cached++
		} else {
			want = append(want, ch)
		}
	}
	if len(want) == 0 {
		rep.Elapsed = time.Since(start)
		return rep, nil
	}
	cids, err := c.queryIndex(ctx, cfg.From, want)
	if err != nil {
		return rep, fmt.Errorf("coordinator.FetchCached: ask %s for its cache index: %w", cfg.From, err)
	}
	var jobs []fetchJob
	for i, ch := range want {
		if cids[i] == nil {
			rep.Missing++
			continue
		}
		jobs = append(jobs, fetchJob{ch: ch, cids: cids[i]})
	}
	verify := map[int]bool{}
	if cfg.Verify > 0 && len(jobs) > 0 {
		for _, i := range rand.Perm(len(jobs))[:min(cfg.Verify, len(jobs))] {
			verify[i] = true
		}
	}
	c.log.Info("fetching cached embeddings", "from", cfg.From.String(), "chunks", len(jobs), "not_held", rep.Missing,
		"already_cached", rep.Cached, "verify", len(verify))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		next     = make(chan int)
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
		mu.Unlock()
	}
	for range cfg.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				tokens, bytes, err := c.fetchChunk(ctx, cfg, jobs[i], verify[i])
				if err != nil {
					fail(err)
					continue
				}
				mu.Lock()
				rep.Fetched++
				rep.Tokens += tokens
				rep.Bytes += bytes
				if verify[i] {
					rep.Verified++
				}
				r := rep
				r.Elapsed = time.Since(start)
				mu.Unlock()
				if progress != nil {
					progress(r)
				}
			}
		}()
	}
feed:
	for i := range jobs {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	rep.Elapsed = time.Since(start)
	if firstErr != nil {
		return rep, fmt.Errorf("coordinator.FetchCached: %w", firstErr)
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("coordinator.FetchCached: %w", err)
	}
	c.log.Info("cached embeddings fetched", "from", cfg.From.String(), "chunks", rep.Fetched, "tokens", rep.Tokens,
		"bytes", rep.Bytes, "seconds", rep.Elapsed.Seconds(), "tokens_per_sec", rep.TokensPerSec())
	return rep, nil
}

// fetchJob is one chunk to fetch: a CID per configured layer.
type fetchJob struct {
	ch   *dataset.Chunk
	cids []cid.Cid
}

// fetchChunk fetches, checks (and, with verify, recomputes and compares)
// and indexes one chunk's frames; it returns the chunk's tokens and the
// frame bytes.
func (c *Coordinator) fetchChunk(ctx context.Context, cfg FetchConfig, j fetchJob, verify bool) (int64, int64, error) {
	dim := c.base.Config.Dim
	rows := make([]int, len(j.ch.Seqs))
	var tokens int64
	for i, s := range j.ch.Seqs {
		rows[i] = len(s.Tokens)
		tokens += int64(len(s.Tokens))
	}
	size := frameSize(c.codec, dim, rows)
	entries := make([][]Entry, len(c.cfg.Layers))
	recs := make([]chunkRecord, len(c.cfg.Layers))
	var total int64
	for li, id := range j.cids {
		if _, err := c.exchange.Fetch(ctx, id, swarm.Limits{MaxSize: size, Idle: cfg.Idle}); err != nil {
			return 0, 0, fmt.Errorf("chunk %s layer %d: %w", short(j.ch.ID), c.cfg.Layers[li], err)
		}
		b, err := c.store.Get(ctx, id, size)
		if err != nil {
			return 0, 0, fmt.Errorf("chunk %s layer %d: %w", short(j.ch.ID), c.cfg.Layers[li], err)
		}
		es, err := parseCacheFile(b, c.codec)
		if err == nil {
			err = checkShape(es, rows, dim)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("chunk %s layer %d: frame %s from %s does not fit the chunk (its blocks stay unindexed; 'carryon cache gc' removes them): %w",
				short(j.ch.ID), c.cfg.Layers[li], id, cfg.From, err)
		}
		entries[li] = es
		recs[li] = chunkRecord{CID: id.String(), Bytes: int64(len(b)), Node: cfg.From.String(), UnixMilli: time.Now().UnixMilli()}
		total += int64(len(b))
	}
	if verify {
		mine, _, err := computeChunk(c.primary(), c.base, j.ch)
		if err != nil {
			return 0, 0, fmt.Errorf("verify chunk %s: %w", short(j.ch.ID), err)
		}
		st, err := compareEntries(c.codec, c.cfg.VerifyKernelRel, mine, entries)
		if err == nil && !st.agree() {
			err = fmt.Errorf("%w: %s", errMismatch, st)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("verify chunk %s: the embeddings %s serves differ from this base's forward pass (is it the same base?): %w",
				short(j.ch.ID), cfg.From, err)
		}
		for i := range recs {
			recs[i].Verified = true
		}
	}
	keys := c.cacheKeys(c.primary(), j.ch)
	err := c.state.groupWrite(func(tx *bolt.Tx) error { return putChunkRecords(tx, keys, recs) }, false)
	if err != nil {
		return 0, 0, fmt.Errorf("index chunk %s: %w", short(j.ch.ID), err)
	}
	if c.cfg.OnCached != nil {
		for _, id := range j.cids {
			c.cfg.OnCached(id)
		}
	}
	return tokens, total, nil
}

// checkShape checks a frame's entries against the chunk's sequence lengths
// and the base's width.
func checkShape(es []Entry, rows []int, dim int) error {
	if len(es) != len(rows) {
		return fmt.Errorf("%d sequences, the chunk has %d", len(es), len(rows))
	}
	for i, e := range es {
		if e.Rows != rows[i] || e.Dim != dim {
			return fmt.Errorf("sequence %d is %d×%d, want %d×%d", i, e.Rows, e.Dim, rows[i], dim)
		}
	}
	return nil
}

// queryIndex asks p for the CIDs of every configured layer of chunks; the
// result has one entry per chunk, nil when p lacks any of its layers.
func (c *Coordinator) queryIndex(ctx context.Context, p peer.ID, chunks []*dataset.Chunk) ([][]cid.Cid, error) {
	s, err := c.h.NewStream(network.WithAllowLimitedConn(ctx, "cache"), p, protocol.CacheProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	out := make([][]cid.Cid, len(chunks))
	for i := range out {
		out[i] = make([]cid.Cid, len(c.cfg.Layers))
	}
	for li, layer := range c.cfg.Layers {
		for lo := 0; lo < len(chunks); lo += protocol.MaxCacheQueryChunks {
			batch := chunks[lo:min(lo+protocol.MaxCacheQueryChunks, len(chunks))]
			q := &protocol.CacheQuery{V: protocol.Version, Base: c.base.EmbedHash(), Codec: c.codec.String(), Layer: layer}
			for _, ch := range batch {
				q.Chunks = append(q.Chunks, ch.ID)
			}
			s.SetDeadline(time.Now().Add(cacheQueryTimeout))
			idx, err := swarm.Ask[*protocol.CacheIndex](s, q)
			if err != nil {
				return nil, err
			}
			if len(idx.CIDs) != len(batch) {
				s.Reset()
				return nil, fmt.Errorf("%d CIDs for %d chunks", len(idx.CIDs), len(batch))
			}
			for i, str := range idx.CIDs {
				if str == "" {
					continue
				}
				id, err := protocol.ParseCID(str) // Validate checked it already
				if err != nil {
					s.Reset()
					return nil, err
				}
				out[lo+i][li] = id
			}
		}
	}
	for i, cs := range out {
		for _, id := range cs {
			if !id.Defined() {
				out[i] = nil
				break
			}
		}
	}
	return out, nil
}
