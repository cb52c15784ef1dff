package swarm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	dag "github.com/ipfs/boxo/ipld/merkledag"
	ft "github.com/ipfs/boxo/ipld/unixfs"
	unixpb "github.com/ipfs/boxo/ipld/unixfs/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/protocol"
)

// Limits bound the UnixFS file a fetch (or a read from the store) accepts.
// Zero fields take the defaults.
type Limits struct {
	// MaxSize is the largest file in bytes; 0 means protocol.MaxFileBytes.
	MaxSize int64
	// MaxDepth is the deepest tree (the root is depth 0); 0 means 32
	// (a balanced tree of 174-link nodes needs 4 levels for 256 GiB).
	MaxDepth int
	// MaxLinks is the most children of one node; 0 means 1024 (carryon
	// and Kubo's balanced layout use 174).
	MaxLinks int
	// MaxBlocks is the most blocks (leaves and nodes, counted per
	// reference); 0 means 1<<18.
	MaxBlocks int
	// MaxBlockSize is the largest block in bytes; 0 means 2 MiB (what
	// bitswap moves).
	MaxBlockSize int
	// Idle gives up a fetch when no block has arrived for this long; 0
	// means 30 s.
	Idle time.Duration
}

func (l Limits) withDefaults() Limits {
	if l.MaxSize <= 0 || l.MaxSize > protocol.MaxFileBytes {
		l.MaxSize = protocol.MaxFileBytes
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = 32
	}
	if l.MaxLinks <= 0 {
		l.MaxLinks = 1024
	}
	if l.MaxBlocks <= 0 {
		l.MaxBlocks = 1 << 18
	}
	if l.MaxBlockSize <= 0 {
		l.MaxBlockSize = 2 << 20
	}
	if l.Idle <= 0 {
		l.Idle = 30 * time.Second
	}
	return l
}

// ErrBadDAG is wrapped by every error about a DAG that is not a UnixFS file
// within the limits: an unknown codec or hash function, a node that does
// not decode, sizes that do not add up, a tree too deep, wide or large.
var ErrBadDAG = errors.New("not an acceptable UnixFS file")

// ErrTruncated is wrapped when blocks of a file cannot be found.
var ErrTruncated = errors.New("truncated DAG: blocks missing")

// CheckCID checks that c is a CID carryon can fetch and verify: version 0
// or 1, codec dag-pb or raw, sha2-256 with a 32-byte digest.
func CheckCID(c cid.Cid) error {
	if err := protocol.CheckCID(c); err != nil {
		return fmt.Errorf("%w: %w", ErrBadDAG, err)
	}
	return nil
}

// ref is one reference to a block in a file's tree.
type ref struct {
	c     cid.Cid
	depth int
	size  int64   // the file bytes under it, as its parent declares; -1 for the root
	from  peer.ID // the peer that delivered its parent ("" for the root, or a parent read from the store)
}

// visit checks one block of a UnixFS file against its reference and the
// limits; it returns the file bytes the block itself holds and its
// children. total counts references so far.
func visit(r ref, blk blocks.Block, lim Limits) (data []byte, kids []ref, err error) {
	c := blk.Cid()
	if len(blk.RawData()) > lim.MaxBlockSize {
		return nil, nil, fmt.Errorf("%w: block %s is %d bytes, over the %d-byte limit", ErrBadDAG, c, len(blk.RawData()), lim.MaxBlockSize)
	}
	if c.Prefix().Codec == cid.Raw {
		if r.size >= 0 && int64(len(blk.RawData())) != r.size {
			return nil, nil, fmt.Errorf("%w: leaf %s is %d bytes, its parent says %d", ErrBadDAG, c, len(blk.RawData()), r.size)
		}
		if r.size < 0 && int64(len(blk.RawData())) > lim.MaxSize {
			return nil, nil, fmt.Errorf("%w: %d bytes, over the %d-byte limit", ErrBadDAG, len(blk.RawData()), lim.MaxSize)
		}
		return blk.RawData(), nil, nil
	}
	nd, err := dag.DecodeProtobuf(blk.RawData())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: node %s: %w", ErrBadDAG, c, err)
	}
	fsn, err := ft.FSNodeFromBytes(nd.Data())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: node %s is not UnixFS: %w", ErrBadDAG, c, err)
	}
	if t := fsn.Type(); t != unixpb.Data_File && t != unixpb.Data_Raw {
		return nil, nil, fmt.Errorf("%w: node %s is a UnixFS %s, want a file", ErrBadDAG, c, t)
	}
	links := nd.Links()
	if len(links) > lim.MaxLinks {
		return nil, nil, fmt.Errorf("%w: node %s has %d children, over the limit of %d", ErrBadDAG, c, len(links), lim.MaxLinks)
	}
	if len(links) > 0 && r.depth+1 > lim.MaxDepth {
		return nil, nil, fmt.Errorf("%w: node %s at depth %d has children, over the depth limit of %d", ErrBadDAG, c, r.depth, lim.MaxDepth)
	}
	if fsn.NumChildren() != len(links) {
		return nil, nil, fmt.Errorf("%w: node %s has %d links but %d block sizes", ErrBadDAG, c, len(links), fsn.NumChildren())
	}
	size := uint64(len(fsn.Data()))
	for i, l := range links {
		if err := CheckCID(l.Cid); err != nil {
			return nil, nil, fmt.Errorf("node %s child %d: %w", c, i, err)
		}
		bs := fsn.BlockSize(i)
		if bs > uint64(lim.MaxSize) {
			return nil, nil, fmt.Errorf("%w: node %s child %d declares %d bytes, over the %d-byte limit", ErrBadDAG, c, i, bs, lim.MaxSize)
		}
		size += bs
		kids = append(kids, ref{c: l.Cid, depth: r.depth + 1, size: int64(bs)})
	}
	if fsn.FileSize() != size {
		return nil, nil, fmt.Errorf("%w: node %s declares %d bytes but its data and children hold %d", ErrBadDAG, c, fsn.FileSize(), size)
	}
	if r.size >= 0 && int64(size) != r.size {
		return nil, nil, fmt.Errorf("%w: node %s holds %d bytes, its parent says %d", ErrBadDAG, c, size, r.size)
	}
	if size > uint64(lim.MaxSize) {
		return nil, nil, fmt.Errorf("%w: %d bytes, over the %d-byte limit", ErrBadDAG, size, lim.MaxSize)
	}
	return fsn.Data(), kids, nil
}

// walkFile reads the file c depth-first through get, checking every block
// against the limits, and passes its bytes in order to emit.
func walkFile(ctx context.Context, c cid.Cid, lim Limits, get func(context.Context, []cid.Cid) ([]blocks.Block, error), emit func([]byte) error) error {
	if err := CheckCID(c); err != nil {
		return err
	}
	stack := []ref{{c: c, size: -1}}
	n := 0
	for len(stack) > 0 {
		r := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n++; n > lim.MaxBlocks {
			return fmt.Errorf("%w: over %d blocks", ErrBadDAG, lim.MaxBlocks)
		}
		bs, err := get(ctx, []cid.Cid{r.c})
		if err != nil {
			return err
		}
		data, kids, err := visit(r, bs[0], lim)
		if err != nil {
			return err
		}
		if len(data) > 0 {
			if err := emit(data); err != nil {
				return err
			}
		}
		for i := len(kids) - 1; i >= 0; i-- {
			stack = append(stack, kids[i])
		}
	}
	return nil
}

// FetchStats describes a finished fetch.
type FetchStats struct {
	Size    int64           // file bytes
	Blocks  int             // blocks fetched (not already in the store)
	Bytes   int64           // their bytes
	Peers   map[peer.ID]int // blocks per peer that delivered them
	Elapsed time.Duration
}

// Fetch makes the store hold every block of the file c: the blocks it
// lacks are fetched over bitswap from connected peers and the providers
// Routing finds, level by level, each checked on arrival against lim.
// Fetched blocks are staged and committed only when the whole file is
// there and checked, so a failed fetch writes nothing. A peer that
// delivered a block that breaks the limits is penalised.
func (x *Exchange) Fetch(ctx context.Context, c cid.Cid, lim Limits) (FetchStats, error) {
	start := time.Now()
	lim = lim.withDefaults()
	st := FetchStats{Peers: map[peer.ID]int{}}
	if err := CheckCID(c); err != nil {
		return st, fmt.Errorf("swarm.Exchange.Fetch %s: %w", c, err)
	}
	stage, err := x.blocks.newStage(ctx)
	if err != nil {
		return st, fmt.Errorf("swarm.Exchange.Fetch %s: %w", c, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	x.net.forgetDontHaves(c)
	sess := x.bs.NewSession(ctx)
	level := []ref{{c: c, size: -1}}
	n := 0
	for depth := 0; len(level) > 0; depth++ {
		n += len(level)
		if n > lim.MaxBlocks {
			stage.discard(ctx)
			return st, fmt.Errorf("swarm.Exchange.Fetch %s: %w: over %d blocks", c, ErrBadDAG, lim.MaxBlocks)
		}
		next, err := x.fetchLevel(ctx, sess, level, lim, stage, &st, depth == 0 && x.routing == nil)
		if err != nil {
			stage.discard(ctx)
			return st, fmt.Errorf("swarm.Exchange.Fetch %s: level %d: %w", c, depth, err)
		}
		level = next
	}
	if err := stage.commit(ctx); err != nil {
		stage.discard(ctx)
		return st, fmt.Errorf("swarm.Exchange.Fetch %s: commit: %w", c, err)
	}
	x.blocks.committed(ctx, c)
	st.Size, _ = x.blocks.Size(ctx, c)
	st.Elapsed = time.Since(start)
	return st, nil
}

// fetchLevel gets the blocks of one level (from the store, else the
// network), checks and stages them, and returns the next level.
func (x *Exchange) fetchLevel(ctx context.Context, sess interface {
	GetBlocks(context.Context, []cid.Cid) (<-chan blocks.Block, error)
}, level []ref, lim Limits, stage *stage, st *FetchStats, askedAll bool) ([]ref, error) {
	// A CID may appear several times (identical chunks): one fetch, every
	// reference checked.
	refs := make(map[string][]ref)
	var want []cid.Cid
	kids := make(map[string][]ref)
	handle := func(blk blocks.Block, fetched bool) error {
		k := string(blk.Cid().Hash())
		for _, r := range refs[k] {
			_, ks, err := visit(r, blk, lim)
			if err != nil {
				if p, ok := x.net.deliverer(blk.Cid()); ok && fetched {
					x.net.penalise(p, err)
					err = fmt.Errorf("%w (from %s, now penalised)", err, p)
				}
				return err
			}
			if fetched {
				if p, ok := x.net.deliverer(blk.Cid()); ok {
					for i := range ks {
						ks[i].from = p
					}
				}
			}
			kids[k+"/"+fmt.Sprint(r.depth)] = ks // same CID, same depth: same children
		}
		if fetched {
			if err := stage.put(ctx, blk); err != nil {
				return err
			}
			st.Blocks++
			st.Bytes += int64(len(blk.RawData()))
			if p, ok := x.net.deliverer(blk.Cid()); ok {
				st.Peers[p]++
			}
		}
		delete(refs, k)
		return nil
	}
	var order []string
	for _, r := range level {
		k := string(r.c.Hash())
		if _, ok := refs[k]; !ok {
			order = append(order, k)
		}
		refs[k] = append(refs[k], r)
	}
	for _, k := range order {
		c := refs[k][0].c
		blk, err := x.blocks.Blockstore().Get(ctx, c)
		if err == nil {
			if err := handle(blk, false); err != nil {
				return nil, err
			}
			continue
		}
		want = append(want, c)
	}
	if len(want) > 0 {
		// Without routing, the connected peers are every source: once each
		// has said DONT_HAVE for the root, waiting longer is pointless. They
		// are listed before the session asks them anything (see sources).
		var sources []peer.ID
		if askedAll {
			sources = x.net.sources()
		}
		ch, err := sess.GetBlocks(ctx, want)
		if err != nil {
			return nil, err
		}
		idle := time.NewTimer(lim.Idle)
		defer idle.Stop()
		// The probe runs beside the loop: a peer still identifying makes
		// it wait, and blocks keep arriving meanwhile.
		var (
			probed chan []peer.ID
			poll   <-chan time.Time
			asked  []peer.ID
		)
		if askedAll {
			probed = make(chan []peer.ID, 1)
			go func() { probed <- x.net.probe(ctx, want[0], sources) }()
		}
		for len(refs) > 0 {
			select {
			case asked = <-probed:
				probed = nil
				t := time.NewTicker(50 * time.Millisecond)
				defer t.Stop()
				poll = t.C
			case <-poll:
				if x.net.nobodyHas(want[0], asked) {
					return nil, fmt.Errorf("%w: no connected peer has %s (and no DHT to find others)", ErrNotFound, want[0])
				}
			case blk, ok := <-ch:
				if !ok {
					if err := ctx.Err(); err != nil {
						return nil, err
					}
					return nil, fmt.Errorf("%w: the exchange stopped with %d blocks missing%s", ErrTruncated, len(refs), x.penaliseTruncated(refs))
				}
				if err := handle(blk, true); err != nil {
					return nil, err
				}
				idle.Reset(lim.Idle)
			case <-idle.C:
				var first cid.Cid
				for _, rs := range refs {
					first = rs[0].c
					break
				}
				return nil, fmt.Errorf("%w: %d of %d blocks not found at any provider within %v (one is %s)%s", ErrTruncated, len(refs), len(want), lim.Idle, first,
					x.penaliseTruncated(refs))
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	var next []ref
	for _, r := range level { // every reference's children, in file order
		next = append(next, kids[string(r.c.Hash())+"/"+fmt.Sprint(r.depth)]...)
	}
	return next, nil
}

// penaliseTruncated penalises each peer that delivered a node of the file
// and then said DONT_HAVE for one of its missing children: it serves a
// truncated DAG. A peer that merely stays silent is not penalised (it may
// be slow). It returns a clause naming them for the fetch's error.
func (x *Exchange) penaliseTruncated(missing map[string][]ref) string {
	liars := map[peer.ID]cid.Cid{}
	for _, rs := range missing {
		for _, r := range rs {
			if r.from != "" && x.net.saidDontHave(r.c, r.from) {
				liars[r.from] = r.c
			}
		}
	}
	var b strings.Builder
	for p, c := range liars {
		err := fmt.Errorf("%w: served a node of the file but not its child %s", ErrTruncated, c)
		x.net.penalise(p, err)
		fmt.Fprintf(&b, "; %s served the parent of %s but lacks it: now penalised", p, c)
	}
	return b.String()
}

// Keep makes this peer hold and serve the file c for good: it is fetched
// if the store lacks it, pinned (garbage collection keeps it) and, when
// disc runs a DHT, provided there (and re-provided until disc closes), so
// the file outlives the peer that published it.
func (x *Exchange) Keep(ctx context.Context, c cid.Cid, lim Limits, disc *Discovery) error {
	if !x.blocks.Has(ctx, c) {
		if _, err := x.Fetch(ctx, c, lim); err != nil {
			return fmt.Errorf("swarm.Exchange.Keep: %w", err)
		}
	}
	if err := x.blocks.Pin(ctx, c, "kept"); err != nil {
		return fmt.Errorf("swarm.Exchange.Keep: %w", err)
	}
	if disc != nil && disc.DHT() != nil {
		if err := disc.Provide(ctx, c); err != nil {
			return fmt.Errorf("swarm.Exchange.Keep: %w", err)
		}
	}
	return nil
}
