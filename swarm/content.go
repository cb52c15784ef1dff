package swarm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/ipfs/boxo/blockstore"
	chunker "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/boxo/datastore/dshelp"
	dag "github.com/ipfs/boxo/ipld/merkledag"
	ft "github.com/ipfs/boxo/ipld/unixfs"
	"github.com/ipfs/boxo/ipld/unixfs/importer/balanced"
	ihelper "github.com/ipfs/boxo/ipld/unixfs/importer/helpers"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	flatfs "github.com/ipfs/go-ds-flatfs"
	ipld "github.com/ipfs/go-ipld-format"
	mh "github.com/multiformats/go-multihash"

	"carryon/internal/atomicfile"
	"carryon/protocol"
)

// How carryon lays a file out as UnixFS: exactly what `ipfs add
// --cid-version=1 --raw-leaves` does, so that Kubo computes the same CID
// for the same bytes. A file of at most ChunkSize bytes is a single raw
// block (its CID has the raw codec); a larger one is a balanced tree of
// dag-pb nodes with at most MaxLinks children over raw leaves.
const (
	// ChunkSize is the length of every leaf but the last (boxo's and
	// Kubo's default fixed-size chunker).
	ChunkSize = 256 << 10
	// MaxLinks is the fan-out of the balanced layout
	// (ihelper.DefaultLinksPerBlock, what Kubo uses).
	MaxLinks = 174
)

// ErrNotFound is wrapped by errors about content that is not in a store.
var ErrNotFound = errors.New("not found")

// ErrHashMismatch is wrapped by every error about bytes that do not hash
// to the CID that names them (a corrupted block file).
var ErrHashMismatch = protocol.ErrHashMismatch

// cidBuilder makes the CIDs of dag-pb nodes: CIDv1, sha2-256.
var cidBuilder = cid.V1Builder{Codec: cid.DagProtobuf, MhType: mh.SHA2_256}

// CIDOf returns the CID that Blocks.Add (and `ipfs add --cid-version=1
// --raw-leaves`) gives data, without storing anything.
func CIDOf(data []byte) cid.Cid {
	c, err := importFile(bytes.NewReader(data), func(blocks.Block) error { return nil })
	if err != nil {
		panic("swarm.CIDOf: " + err.Error()) // a bytes.Reader and a discarding sink cannot fail
	}
	return c
}

// importFile lays r out as a UnixFS file and hands every block to put
// (leaves first, the root last); it returns the root's CID.
func importFile(r io.Reader, put func(blocks.Block) error) (cid.Cid, error) {
	params := ihelper.DagBuilderParams{Maxlinks: MaxLinks, RawLeaves: true, CidBuilder: cidBuilder, Dagserv: sinkDAG{put}}
	db, err := params.New(chunker.NewSizeSplitter(r, ChunkSize))
	if err != nil {
		return cid.Undef, err
	}
	root, err := balanced.Layout(db)
	if err != nil {
		return cid.Undef, err
	}
	return root.Cid(), nil
}

// sinkDAG is the importer's write-only DAG service.
type sinkDAG struct{ put func(blocks.Block) error }

func (s sinkDAG) Add(_ context.Context, n ipld.Node) error { return s.put(n) }
func (s sinkDAG) AddMany(ctx context.Context, ns []ipld.Node) error {
	for _, n := range ns {
		if err := s.put(n); err != nil {
			return err
		}
	}
	return nil
}
func (sinkDAG) Get(_ context.Context, c cid.Cid) (ipld.Node, error) {
	return nil, ipld.ErrNotFound{Cid: c}
}
func (sinkDAG) GetMany(context.Context, []cid.Cid) <-chan *ipld.NodeOption {
	ch := make(chan *ipld.NodeOption)
	close(ch)
	return ch
}
func (sinkDAG) Remove(context.Context, cid.Cid) error       { return nil }
func (sinkDAG) RemoveMany(context.Context, []cid.Cid) error { return nil }

// Blocks is a peer's content store: UnixFS files (adaptors, cached
// embeddings) as blocks in a boxo blockstore on a flatfs datastore (one
// file per block, as in Kubo's default blockstore), and the roots that are
// pinned, which garbage collection keeps. Writes of a whole file go
// through a flatfs batch: its blocks are staged as temporary files and
// moved into place together on commit, so an import or a fetch that fails
// leaves nothing in the store. Every block read is re-hashed: a corrupted
// file is reported, never served. Safe for concurrent use.
type Blocks struct {
	dir  string
	ds   *flatfs.Datastore
	bs   blockstore.Blockstore
	pins string // directory of pin files, one per pinned root

	mu       sync.Mutex
	onCommit []func(ctx context.Context, roots []cid.Cid) // called after a file's blocks are committed
}

// OpenBlocks opens (creating) a store in dir: blocks in dir/blocks, pins in
// dir/pins.
func OpenBlocks(dir string) (*Blocks, error) {
	if err := os.MkdirAll(filepath.Join(dir, "pins"), 0o755); err != nil {
		return nil, fmt.Errorf("swarm.OpenBlocks: %w", err)
	}
	removeUnfinishedFlatfs(filepath.Join(dir, "blocks"))
	// next-to-last/2 sharding, synced writes: Kubo's flatfs defaults.
	d, err := flatfs.CreateOrOpen(filepath.Join(dir, "blocks"), flatfs.NextToLast(2), true)
	if err != nil {
		return nil, fmt.Errorf("swarm.OpenBlocks %s: %w", dir, err)
	}
	return &Blocks{dir: dir, ds: d, bs: &verifyingStore{blockstore.NewBlockstore(d, blockstore.NoPrefix())}, pins: filepath.Join(dir, "pins")}, nil
}

// removeUnfinishedFlatfs removes a flatfs directory whose creation a
// killed process left unfinished: flatfs makes the directory, then writes
// its SHARDING file (ending in a newline), and refuses to open a directory
// without a complete one. Only a directory that holds nothing else (no
// block was ever stored in it) is removed; anything else is left for
// flatfs to report.
func removeUnfinishedFlatfs(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	if b, err := os.ReadFile(filepath.Join(dir, flatfs.SHARDING_FN)); err == nil && bytes.HasSuffix(b, []byte("\n")) {
		return
	}
	for _, e := range ents {
		if e.Name() != flatfs.SHARDING_FN && e.Name() != flatfs.README_FN {
			return
		}
	}
	os.RemoveAll(dir)
}

// Close closes the datastore.
func (b *Blocks) Close() error {
	if err := b.ds.Close(); err != nil {
		return fmt.Errorf("swarm.Blocks.Close: %w", err)
	}
	return nil
}

// Dir is the store's directory.
func (b *Blocks) Dir() string { return b.dir }

// Blockstore is the store's blocks, for bitswap to serve (reads re-hash).
func (b *Blocks) Blockstore() blockstore.Blockstore { return b.bs }

// OnCommit registers f to be called after the blocks of each added or
// fetched file are committed (an Exchange tells bitswap about them).
func (b *Blocks) OnCommit(f func(ctx context.Context, roots []cid.Cid)) {
	b.mu.Lock()
	b.onCommit = append(b.onCommit, f)
	b.mu.Unlock()
}

func (b *Blocks) committed(ctx context.Context, roots ...cid.Cid) {
	b.mu.Lock()
	fs := append([]func(context.Context, []cid.Cid){}, b.onCommit...)
	b.mu.Unlock()
	for _, f := range fs {
		f(ctx, roots)
	}
}

// stage is a batch of blocks written together or not at all.
type stage struct {
	b     *Blocks
	batch ds.Batch
	n     int
	bytes int64
}

func (b *Blocks) newStage(ctx context.Context) (*stage, error) {
	batch, err := b.ds.Batch(ctx)
	if err != nil {
		return nil, err
	}
	return &stage{b: b, batch: batch}, nil
}

func (s *stage) put(ctx context.Context, blk blocks.Block) error {
	s.n++
	s.bytes += int64(len(blk.RawData()))
	return s.batch.Put(ctx, dshelp.MultihashToDsKey(blk.Cid().Hash()), blk.RawData())
}

func (s *stage) commit(ctx context.Context) error { return s.batch.Commit(ctx) }

// discard drops the staged blocks (their temporary files).
func (s *stage) discard(ctx context.Context) {
	if d, ok := s.batch.(interface{ Discard(context.Context) error }); ok {
		d.Discard(ctx)
	}
}

// Add imports r as a UnixFS file (CIDOf's layout) and returns its CID.
func (b *Blocks) Add(ctx context.Context, r io.Reader) (cid.Cid, error) {
	st, err := b.newStage(ctx)
	if err != nil {
		return cid.Undef, fmt.Errorf("swarm.Blocks.Add: %w", err)
	}
	c, err := importFile(r, func(blk blocks.Block) error { return st.put(ctx, blk) })
	if err == nil {
		err = st.commit(ctx)
	}
	if err != nil {
		st.discard(ctx)
		return cid.Undef, fmt.Errorf("swarm.Blocks.Add: %w", err)
	}
	b.committed(ctx, c)
	return c, nil
}

// AddBytes imports data; see Add.
func (b *Blocks) AddBytes(ctx context.Context, data []byte) (cid.Cid, error) {
	return b.Add(ctx, bytes.NewReader(data))
}

// Has reports whether every block of the file c is in the store.
func (b *Blocks) Has(ctx context.Context, c cid.Cid) bool {
	err := b.walk(ctx, c, func(blocks.Block) error { return nil })
	return err == nil
}

// Size returns the length of the file c from its root block.
func (b *Blocks) Size(ctx context.Context, c cid.Cid) (int64, error) {
	blk, err := b.bs.Get(ctx, c)
	if err != nil {
		return 0, b.getErr("Size", c, err)
	}
	n, err := fileNodeSize(blk)
	if err != nil {
		return 0, fmt.Errorf("swarm.Blocks.Size %s: %w", c, err)
	}
	return int64(n), nil
}

// fileNodeSize is the file length a root block declares.
func fileNodeSize(blk blocks.Block) (uint64, error) {
	if blk.Cid().Prefix().Codec == cid.Raw {
		return uint64(len(blk.RawData())), nil
	}
	nd, err := dag.DecodeProtobuf(blk.RawData())
	if err != nil {
		return 0, err
	}
	fsn, err := ft.FSNodeFromBytes(nd.Data())
	if err != nil {
		return 0, err
	}
	return fsn.FileSize(), nil
}

// WriteTo writes the file c to w from the store, checking every block
// and the layout as a fetch does (Limits' defaults, maxSize bytes at most;
// <= 0 means no limit beyond the default).
func (b *Blocks) WriteTo(ctx context.Context, c cid.Cid, w io.Writer, maxSize int64) (int64, error) {
	lim := Limits{MaxSize: maxSize}.withDefaults()
	var n int64
	err := walkFile(ctx, c, lim, func(ctx context.Context, cs []cid.Cid) ([]blocks.Block, error) {
		out := make([]blocks.Block, len(cs))
		for i, c := range cs {
			blk, err := b.bs.Get(ctx, c)
			if err != nil {
				return nil, err
			}
			out[i] = blk
		}
		return out, nil
	}, func(data []byte) error {
		k, err := w.Write(data)
		n += int64(k)
		return err
	})
	if err != nil {
		return n, b.getErr("WriteTo", c, err)
	}
	return n, nil
}

// Get returns the whole file c (at most maxSize bytes; see WriteTo).
func (b *Blocks) Get(ctx context.Context, c cid.Cid, maxSize int64) ([]byte, error) {
	var buf bytes.Buffer
	if size, err := b.Size(ctx, c); err == nil && size > 0 && (maxSize <= 0 || size <= maxSize) {
		buf.Grow(int(size))
	}
	if _, err := b.WriteTo(ctx, c, &buf, maxSize); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (b *Blocks) getErr(op string, c cid.Cid, err error) error {
	if ipld.IsNotFound(err) {
		return fmt.Errorf("swarm.Blocks.%s %s: %w (%w)", op, c, ErrNotFound, err)
	}
	return fmt.Errorf("swarm.Blocks.%s %s: %w", op, c, err)
}

// walk calls f on every block of the DAG under c (any codecs the fetch
// limits allow), stopping at the first missing block.
func (b *Blocks) walk(ctx context.Context, c cid.Cid, f func(blocks.Block) error) error {
	seen := map[cid.Cid]bool{}
	stack := []cid.Cid{c}
	for len(stack) > 0 {
		c := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[c] {
			continue
		}
		seen[c] = true
		blk, err := b.bs.Get(ctx, c)
		if err != nil {
			return err
		}
		if err := f(blk); err != nil {
			return err
		}
		if c.Prefix().Codec == cid.DagProtobuf {
			nd, err := dag.DecodeProtobuf(blk.RawData())
			if err != nil {
				return fmt.Errorf("block %s: %w", c, err)
			}
			for _, l := range nd.Links() {
				stack = append(stack, l.Cid)
			}
		}
	}
	return nil
}

// Pin keeps the file c (which must be in the store) through garbage
// collection; label says why (shown by Pins).
func (b *Blocks) Pin(ctx context.Context, c cid.Cid, label string) error {
	if !b.Has(ctx, c) {
		return fmt.Errorf("swarm.Blocks.Pin %s: %w", c, ErrNotFound)
	}
	if err := atomicfile.Write(filepath.Join(b.pins, c.String()), []byte(label), 0o644); err != nil {
		return fmt.Errorf("swarm.Blocks.Pin %s: %w", c, err)
	}
	return nil
}

// Unpin lets garbage collection remove c (unless something else keeps it).
func (b *Blocks) Unpin(c cid.Cid) error {
	if err := os.Remove(filepath.Join(b.pins, c.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("swarm.Blocks.Unpin %s: %w", c, err)
	}
	return nil
}

// Pins returns the pinned roots and their labels.
func (b *Blocks) Pins() (map[cid.Cid]string, error) {
	ents, err := os.ReadDir(b.pins)
	if err != nil {
		return nil, fmt.Errorf("swarm.Blocks.Pins: %w", err)
	}
	out := make(map[cid.Cid]string, len(ents))
	for _, e := range ents {
		c, err := cid.Decode(e.Name())
		if err != nil {
			continue // a temporary file of an interrupted Pin
		}
		label, err := os.ReadFile(filepath.Join(b.pins, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("swarm.Blocks.Pins: %w", err)
		}
		out[c] = string(label)
	}
	return out, nil
}

// BlockInfo is one stored block.
type BlockInfo struct {
	Hash mh.Multihash
	Size int
}

// List returns every block in the store (by multihash: a raw and a dag-pb
// CID with the same hash name the same block), sorted by hash.
func (b *Blocks) List(ctx context.Context) ([]BlockInfo, error) {
	ch, err := b.bs.AllKeysChan(ctx)
	if err != nil {
		return nil, fmt.Errorf("swarm.Blocks.List: %w", err)
	}
	var out []BlockInfo
	for c := range ch {
		n, err := b.bs.GetSize(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("swarm.Blocks.List: %w", err)
		}
		out = append(out, BlockInfo{Hash: c.Hash(), Size: n})
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("swarm.Blocks.List: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return string(out[i].Hash) < string(out[j].Hash) })
	return out, nil
}

// GCResult reports a garbage collection, or (from Garbage) what one would
// remove.
type GCResult struct {
	Kept, Removed           int
	KeptBytes, RemovedBytes int64
	// RemovedBlocks are the removed blocks with their sizes, sorted by
	// hash.
	RemovedBlocks []GCBlock
}

// GCBlock is one block a garbage collection removes, named by the
// raw-codec CIDv1 of its hash (a block store keys blocks by multihash
// only).
type GCBlock struct {
	CID  cid.Cid
	Size int
}

// Garbage returns what GC(ctx, keep) would remove, removing nothing: every
// block not reachable from a pinned root or from keep. Blocks of a root
// that is itself incomplete count as live as far as they are reachable.
func (b *Blocks) Garbage(ctx context.Context, keep []cid.Cid) (GCResult, error) {
	pins, err := b.Pins()
	if err != nil {
		return GCResult{}, err
	}
	roots := append([]cid.Cid(nil), keep...)
	for c := range pins {
		roots = append(roots, c)
	}
	live := map[string]bool{}
	for _, r := range roots {
		err := b.walk(ctx, r, func(blk blocks.Block) error {
			live[string(blk.Cid().Hash())] = true
			return nil
		})
		if err != nil && !ipld.IsNotFound(err) {
			return GCResult{}, fmt.Errorf("swarm.Blocks.Garbage: root %s: %w", r, err)
		}
	}
	all, err := b.List(ctx)
	if err != nil {
		return GCResult{}, err
	}
	var res GCResult
	for _, bi := range all {
		if live[string(bi.Hash)] {
			res.Kept++
			res.KeptBytes += int64(bi.Size)
			continue
		}
		res.RemovedBlocks = append(res.RemovedBlocks, GCBlock{CID: cid.NewCidV1(cid.Raw, bi.Hash), Size: bi.Size})
		res.Removed++
		res.RemovedBytes += int64(bi.Size)
	}
	return res, nil
}

// GC removes every block not reachable from a pinned root or from keep
// (Garbage's list). On an error the result counts what was removed by
// then.
func (b *Blocks) GC(ctx context.Context, keep []cid.Cid) (GCResult, error) {
	plan, err := b.Garbage(ctx, keep)
	if err != nil {
		return GCResult{}, fmt.Errorf("swarm.Blocks.GC: %w", err)
	}
	res := GCResult{Kept: plan.Kept, KeptBytes: plan.KeptBytes}
	for _, g := range plan.RemovedBlocks {
		if err := b.bs.DeleteBlock(ctx, g.CID); err != nil {
			return res, fmt.Errorf("swarm.Blocks.GC: %w", err)
		}
		res.RemovedBlocks = append(res.RemovedBlocks, g)
		res.Removed++
		res.RemovedBytes += int64(g.Size)
	}
	return res, nil
}

// verifyingStore re-hashes every block it reads.
type verifyingStore struct{ blockstore.Blockstore }

func (v *verifyingStore) Get(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	blk, err := v.Blockstore.Get(ctx, c)
	if err != nil {
		return nil, err
	}
	if err := verifyBlock(c, blk.RawData()); err != nil {
		return nil, fmt.Errorf("corrupted block file: %w", err)
	}
	return blk, nil
}

// verifyBlock checks that data hashes to c (a mismatch wraps
// ErrHashMismatch).
func verifyBlock(c cid.Cid, data []byte) error {
	got, err := c.Prefix().Sum(data)
	if err != nil {
		return fmt.Errorf("block %s: %w", c, err)
	}
	if !got.Equals(c) {
		return fmt.Errorf("block %s: %d bytes hash to %s: %w", c, len(data), got, ErrHashMismatch)
	}
	return nil
}

// shortCID abbreviates a CID for messages.
func shortCID(c cid.Cid) string {
	s := c.String()
	if len(s) > 16 {
		return s[:8] + "…" + s[len(s)-6:]
	}
	return s
}
