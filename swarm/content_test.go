package swarm

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/boxo/blockstore"
	dag "github.com/ipfs/boxo/ipld/merkledag"
	ft "github.com/ipfs/boxo/ipld/unixfs"
	ihelper "github.com/ipfs/boxo/ipld/unixfs/importer/helpers"
	unixpb "github.com/ipfs/boxo/ipld/unixfs/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"

	"carryon/protocol"
)

func randomBlob(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openBlocks(t testing.TB) *Blocks {
	t.Helper()
	b, err := OpenBlocks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// peerNode is a host with a block store and a bitswap exchange.
type peerNode struct {
	h  host.Host
	b  *Blocks
	x  *Exchange
	mu sync.Mutex
	// penalties records the penalties the exchange gave.
	penalties map[peer.ID]error
}

func newPeerNode(t testing.TB, cfg HostConfig, wrap func(blockstore.Blockstore) blockstore.Blockstore) *peerNode {
	t.Helper()
	n := &peerNode{h: newHost(t, cfg), b: openBlocks(t), penalties: map[peer.ID]error{}}
	if wrap != nil {
		n.b.bs = wrap(n.b.bs)
	}
	x, err := NewExchange(n.h, n.b, ExchangeConfig{OnPenalty: func(p peer.ID, err error) {
		n.mu.Lock()
		n.penalties[p] = err
		n.mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	n.x = x
	t.Cleanup(func() { x.Close() })
	return n
}

// leave takes n off the network: its exchange and host close.
func (n *peerNode) leave() {
	n.x.Close()
	n.h.Close()
}

func (n *peerNode) penalty(p peer.ID) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.penalties[p]
}

// storeEmpty fails the test if the store holds any block.
func storeEmpty(t *testing.T, b *Blocks) {
	t.Helper()
	all, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 0 {
		t.Fatalf("the store holds %d blocks after a failed fetch, want none", len(all))
	}
}

func TestLayoutMatchesKubo(t *testing.T) {
	if MaxLinks != ihelper.DefaultLinksPerBlock {
		t.Fatalf("MaxLinks %d, boxo's default %d", MaxLinks, ihelper.DefaultLinksPerBlock)
	}
	// Up to one chunk: a single raw block, whose CID is the raw CID of
	// the bytes (what older carryon called every file).
	small := randomBlob(ChunkSize, 1)
	h, _ := mh.Sum(small, mh.SHA2_256, -1)
	if got, want := CIDOf(small), cid.NewCidV1(cid.Raw, h); !got.Equals(want) {
		t.Fatalf("one-chunk file: %s, want the raw CID %s", got, want)
	}
	// These CIDs are what `ipfs add --cid-version=1 --raw-leaves` (Kubo
	// v0.43.1) printed for the same bytes; kubo_test.go checks it live.
	for _, tt := range []struct {
		n    int
		seed uint64
		want string
	}{
		{ChunkSize + 1, 2, kuboCIDs[0]},
		{MaxLinks*ChunkSize + 5, 3, kuboCIDs[1]}, // two levels
	} {
		got := CIDOf(randomBlob(tt.n, tt.seed))
		if got.Prefix().Codec != cid.DagProtobuf || got.Version() != 1 {
			t.Fatalf("%d bytes: %s is not a CIDv1 dag-pb root", tt.n, got)
		}
		if tt.want != "" && got.String() != tt.want {
			t.Errorf("%d bytes: %s, Kubo says %s", tt.n, got, tt.want)
		}
	}
}

func TestBlocksStore(t *testing.T) {
	ctx := testCtx(t)
	b := openBlocks(t)
	data := randomBlob(3*ChunkSize+77, 4)
	c, err := b.AddBytes(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Equals(CIDOf(data)) {
		t.Fatalf("Add gave %s, CIDOf %s", c, CIDOf(data))
	}
	if !b.Has(ctx, c) {
		t.Fatal("Has: false after Add")
	}
	if n, err := b.Size(ctx, c); err != nil || n != int64(len(data)) {
		t.Fatalf("Size: %d, %v", n, err)
	}
	got, err := b.Get(ctx, c, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get: %d bytes, %v", len(got), err)
	}
	if _, err := b.Get(ctx, c, int64(len(data)-1)); !errors.Is(err, ErrBadDAG) {
		t.Fatalf("Get over maxSize: %v, want ErrBadDAG", err)
	}
	if _, err := b.Get(ctx, CIDOf([]byte("absent")), 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of an absent file: %v, want ErrNotFound", err)
	}

	// Pins keep files through GC; the rest goes.
	other, _ := b.AddBytes(ctx, randomBlob(ChunkSize+1, 5))
	if err := b.Pin(ctx, c, "adaptor"); err != nil {
		t.Fatal(err)
	}
	plan, err := b.Garbage(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Removed != 3 || plan.Kept != 5 || !b.Has(ctx, other) {
		t.Fatalf("Garbage %+v: want the other file's 3 blocks listed, and still stored", plan)
	}
	res, err := b.GC(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 3 || res.Kept != 5 || !b.Has(ctx, c) || b.Has(ctx, other) {
		t.Fatalf("GC %+v: want the pinned file's 5 blocks kept and the other's 3 removed", res)
	}
	var sum int64
	for _, g := range res.RemovedBlocks {
		sum += int64(g.Size)
	}
	if !reflect.DeepEqual(res, plan) || sum != res.RemovedBytes || sum <= ChunkSize+1 {
		t.Fatalf("GC removed %+v (%d bytes in its list), Garbage listed %+v; want the same, over the file's %d bytes", res, sum, plan, ChunkSize+1)
	}
	pins, _ := b.Pins()
	if pins[c] != "adaptor" || len(pins) != 1 {
		t.Fatalf("Pins: %v", pins)
	}

	// A corrupted block file is reported, never returned.
	var leaf string
	filepath.Walk(filepath.Join(b.Dir(), "blocks"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && strings.HasSuffix(p, ".data") && fi.Size() == ChunkSize {
			leaf = p
		}
		return nil
	})
	if leaf == "" {
		t.Fatal("no leaf file found")
	}
	raw, _ := os.ReadFile(leaf)
	raw[100] ^= 1
	os.WriteFile(leaf, raw, 0o644)
	if _, err := b.Get(ctx, c, 0); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Get with a corrupted block: %v, want ErrHashMismatch", err)
	}
}

// TestFetch: a file moves over bitswap, and the peer that pulled it serves
// it on after the origin is gone.
func TestFetch(t *testing.T) {
	ctx := testCtx(t)
	a, b, c := newPeerNode(t, HostConfig{}, nil), newPeerNode(t, HostConfig{}, nil), newPeerNode(t, HostConfig{}, nil)
	data := randomBlob(5*ChunkSize+3, 6)
	id, err := a.b.AddBytes(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	mustConnect(t, b.h, a.h)
	st, err := b.x.Fetch(ctx, id, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(len(data)) || st.Blocks != 7 || st.Peers[a.h.ID()] != 7 {
		t.Fatalf("stats %+v: want 7 blocks from the origin", st)
	}
	if got, _ := b.b.Get(ctx, id, 0); !bytes.Equal(got, data) {
		t.Fatal("fetched file differs")
	}
	// Fetching again is local.
	if st, err := b.x.Fetch(ctx, id, Limits{}); err != nil || st.Blocks != 0 {
		t.Fatalf("second fetch: %+v, %v", st, err)
	}
	a.leave()
	mustConnect(t, c.h, b.h)
	if _, err := c.x.Fetch(ctx, id, Limits{}); err != nil {
		t.Fatalf("from the peer that pulled: %v", err)
	}
	if got, _ := c.b.Get(ctx, id, 0); !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
}

// lyingStore serves other bytes under every CID it holds.
type lyingStore struct{ blockstore.Blockstore }

func (l lyingStore) Get(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	blk, err := l.Blockstore.Get(ctx, c)
	if err != nil {
		return nil, err
	}
	data := bytes.Clone(blk.RawData())
	data[len(data)/2] ^= 0xff
	return blocks.NewBlockWithCid(data, c)
}

// TestLyingPeer: a peer that answers wants with wrong bytes is penalised and
// nothing it sent is stored; the fetch then completes from an honest peer.
func TestLyingPeer(t *testing.T) {
	ctx := testCtx(t)
	honest := newPeerNode(t, HostConfig{}, nil)
	liar := newPeerNode(t, HostConfig{}, func(bs blockstore.Blockstore) blockstore.Blockstore { return lyingStore{bs} })
	puller := newPeerNode(t, HostConfig{}, nil)
	data := randomBlob(2*ChunkSize+9, 7)
	id, _ := honest.b.AddBytes(ctx, data)
	if _, err := liar.b.AddBytes(ctx, data); err != nil {
		t.Fatal(err)
	}

	// Only the liar: the fetch fails, the liar is penalised, nothing stored.
	mustConnect(t, puller.h, liar.h)
	_, err := puller.x.Fetch(ctx, id, Limits{Idle: 2 * time.Second})
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("fetch from a liar: %v, want ErrTruncated", err)
	}
	if perr := puller.penalty(liar.h.ID()); !errors.Is(perr, ErrHashMismatch) || !puller.x.Penalised(liar.h.ID()) {
		t.Fatalf("liar's penalty: %v", perr)
	}
	storeEmpty(t, puller.b)

	// With an honest peer too: the file arrives, only from the honest one.
	mustConnect(t, puller.h, honest.h)
	st, err := puller.x.Fetch(ctx, id, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Peers[liar.h.ID()] != 0 {
		t.Fatalf("blocks from the liar: %v", st.Peers)
	}
	if got, _ := puller.b.Get(ctx, id, 0); !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
}

// TestProbeSources: the peers whose DONT_HAVE a fetch without routing
// waits for before it says that no connected peer has a file. They are
// listed before anyone is asked: a peer penalised (for wrong bytes) between
// the listing and the probe still counts, so a liar quicker than the probe
// does not turn the fetch's answer into "nobody has it" (TestLyingPeer's
// flake); a peer whose protocols are not known yet (identify still running)
// is asked, not skipped; an identified peer without bitswap is not listed;
// a listed peer that has left is dropped.
func TestProbeSources(t *testing.T) {
	ctx := testCtx(t)
	puller := newPeerNode(t, HostConfig{}, nil)
	liar := newPeerNode(t, HostConfig{}, nil)
	identifying := newPeerNode(t, HostConfig{}, nil)
	gone := newPeerNode(t, HostConfig{}, nil)
	plain := newHost(t, HostConfig{}) // no bitswap
	for _, h := range []host.Host{liar.h, identifying.h, gone.h, plain} {
		mustConnect(t, puller.h, h)
	}
	// As before identify has answered: the peerstore knows no protocols.
	ps := puller.h.Peerstore()
	protos, err := ps.GetProtocols(identifying.h.ID())
	if err != nil || len(protos) == 0 {
		t.Fatalf("protocols of a connected peer: %v, %v", protos, err)
	}
	if err := ps.RemoveProtocols(identifying.h.ID(), protos...); err != nil {
		t.Fatal(err)
	}
	g := puller.x.net
	has := func(ps []peer.ID, p peer.ID) bool { return slices.Contains(ps, p) }
	src := g.sources()
	if len(src) != 3 || !has(src, liar.h.ID()) || !has(src, identifying.h.ID()) || !has(src, gone.h.ID()) {
		t.Fatalf("sources %v: want the liar %s, the identifying peer %s and the one about to leave %s, not the plain host %s",
			src, liar.h.ID(), identifying.h.ID(), gone.h.ID(), plain.ID())
	}
	g.penalise(liar.h.ID(), ErrHashMismatch) // its wrong bytes beat the probe
	gone.leave()
	c := CIDOf([]byte("nobody has this"))
	asked := g.probe(ctx, c, src)
	if len(asked) != 2 || !has(asked, liar.h.ID()) || !has(asked, identifying.h.ID()) {
		t.Fatalf("probed %v: want the liar %s and the identifying peer %s", asked, liar.h.ID(), identifying.h.ID())
	}
	if g.nobodyHas(c, asked) {
		t.Fatal("nobodyHas with a penalised source that never said DONT_HAVE")
	}
}

// TestTruncatedDAG: a provider that serves a file's root but lacks a leaf:
// the fetch fails naming the missing block, the provider is penalised (it
// said DONT_HAVE for a child of a node it served) and nothing is written.
func TestTruncatedDAG(t *testing.T) {
	ctx := testCtx(t)
	src, puller := newPeerNode(t, HostConfig{}, nil), newPeerNode(t, HostConfig{}, nil)
	data := randomBlob(3*ChunkSize, 8)
	id, _ := src.b.AddBytes(ctx, data)
	leaf := CIDOf(data[ChunkSize : 2*ChunkSize])
	if err := src.b.bs.DeleteBlock(ctx, leaf); err != nil {
		t.Fatal(err)
	}
	mustConnect(t, puller.h, src.h)
	_, err := puller.x.Fetch(ctx, id, Limits{Idle: 5 * time.Second}) // the DONT_HAVE must come before the idle timeout
	if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "1 of 3 blocks not found") || !strings.Contains(err.Error(), leaf.String()) {
		t.Fatalf("fetch: %v, want a truncated DAG naming %s", err, leaf)
	}
	if perr := puller.penalty(src.h.ID()); !errors.Is(perr, ErrTruncated) || !puller.x.Penalised(src.h.ID()) ||
		!strings.Contains(err.Error(), "now penalised") {
		t.Fatalf("the provider of the truncated DAG: penalty %v; fetch error %v", perr, err)
	}
	storeEmpty(t, puller.b)
}

// fileNode makes a UnixFS file node over children of the given sizes;
// fileSize overrides the declared total when >= 0.
func fileNode(t *testing.T, kids []cid.Cid, sizes []uint64, fileSize int64) *dag.ProtoNode {
	t.Helper()
	fsn := ft.NewFSNode(unixpb.Data_File)
	nd := new(dag.ProtoNode)
	nd.SetCidBuilder(cidBuilder)
	for i, k := range kids {
		if err := nd.AddRawLink("", &ipld.Link{Cid: k, Size: sizes[i]}); err != nil {
			t.Fatal(err)
		}
		fsn.AddBlockSize(sizes[i])
	}
	if fileSize >= 0 {
		fsn.UpdateFilesize(fileSize - int64(fsn.FileSize()))
	}
	b, err := fsn.GetBytes()
	if err != nil {
		t.Fatal(err)
	}
	nd.SetData(b)
	return nd
}

// TestLimits: DAGs that break the caps are refused with ErrBadDAG, the
// peer that served them penalised and nothing stored.
func TestLimits(t *testing.T) {
	ctx := testCtx(t)
	leafData := []byte("leaf")
	leaf := blocks.NewBlock(leafData)
	leafCID := cid.NewCidV1(cid.Raw, leaf.Cid().Hash())
	leafBlk, _ := blocks.NewBlockWithCid(leafData, leafCID)
	repeat := func(c cid.Cid, n int) ([]cid.Cid, []uint64) {
		cs, ss := make([]cid.Cid, n), make([]uint64, n)
		for i := range cs {
			cs[i], ss[i] = c, uint64(len(leafData))
		}
		return cs, ss
	}
	cbor := cid.NewCidV1(cid.DagCBOR, leafCID.Hash())
	tests := []struct {
		name  string
		build func() (root cid.Cid, blks []blocks.Block)
		want  string
	}{
		{"too wide", func() (cid.Cid, []blocks.Block) {
			cs, ss := repeat(leafCID, 1025)
			nd := fileNode(t, cs, ss, -1)
			return nd.Cid(), []blocks.Block{nd, leafBlk}
		}, "1025 children, over the limit of 1024"},
		{"too deep", func() (cid.Cid, []blocks.Block) {
			var bs []blocks.Block
			c, size := leafCID, uint64(len(leafData))
			bs = append(bs, leafBlk)
			for range 33 {
				nd := fileNode(t, []cid.Cid{c}, []uint64{size}, -1)
				bs = append(bs, nd)
				c = nd.Cid()
			}
			return c, bs
		}, "over the depth limit of 32"},
		{"unknown codec", func() (cid.Cid, []blocks.Block) {
			nd := fileNode(t, []cid.Cid{cbor}, []uint64{4}, -1)
			return nd.Cid(), []blocks.Block{nd}
		}, "codec 0x71"},
		{"unknown hash", func() (cid.Cid, []blocks.Block) {
			nd := fileNode(t, []cid.Cid{cid.NewCidV1(cid.Raw, mustSum(t, mh.SHA2_512))}, []uint64{4}, -1)
			return nd.Cid(), []blocks.Block{nd}
		}, "hash function 0x13 (sha2-512)"},
		{"sizes disagree", func() (cid.Cid, []blocks.Block) {
			nd := fileNode(t, []cid.Cid{leafCID}, []uint64{4}, 5)
			return nd.Cid(), []blocks.Block{nd, leafBlk}
		}, "declares 5 bytes but its data and children hold 4"},
		{"leaf shorter than declared", func() (cid.Cid, []blocks.Block) {
			nd := fileNode(t, []cid.Cid{leafCID}, []uint64{9}, -1)
			return nd.Cid(), []blocks.Block{nd, leafBlk}
		}, "leaf " + leafCID.String() + " is 4 bytes, its parent says 9"},
		{"over max size", func() (cid.Cid, []blocks.Block) {
			cs, ss := repeat(leafCID, 300)
			nd := fileNode(t, cs, ss, -1)
			return nd.Cid(), []blocks.Block{nd, leafBlk}
		}, "1200 bytes, over the 1000-byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, puller := newPeerNode(t, HostConfig{}, nil), newPeerNode(t, HostConfig{}, nil)
			root, blks := tt.build()
			if err := src.b.bs.PutMany(ctx, blks); err != nil {
				t.Fatal(err)
			}
			mustConnect(t, puller.h, src.h)
			_, err := puller.x.Fetch(ctx, root, Limits{MaxSize: 1000, Idle: 5 * time.Second})
			if !errors.Is(err, ErrBadDAG) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("fetch: %v, want ErrBadDAG containing %q", err, tt.want)
			}
			if !puller.x.Penalised(src.h.ID()) {
				t.Fatal("the peer that served it is not penalised")
			}
			storeEmpty(t, puller.b)
		})
	}

	// A root CID of an unknown codec or hash is refused before anything
	// is asked of the network.
	puller := newPeerNode(t, HostConfig{}, nil)
	for _, c := range []cid.Cid{cbor, cid.NewCidV1(cid.Raw, mustSum(t, mh.SHA2_512))} {
		if _, err := puller.x.Fetch(ctx, c, Limits{}); !errors.Is(err, ErrBadDAG) || !errors.Is(err, protocol.ErrUnsupportedCID) {
			t.Errorf("fetch %s: %v, want ErrBadDAG and ErrUnsupportedCID", c, err)
		}
	}
}

func mustSum(t *testing.T, code uint64) mh.Multihash {
	h, err := mh.Sum([]byte("x"), code, -1)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestFetchSurvivesAKilledProvider: three providers, one killed after it
// has delivered blocks; the fetch completes from the other two.
func TestFetchSurvivesAKilledProvider(t *testing.T) {
	ctx := testCtx(t)
	data := randomBlob(48*ChunkSize+1, 9)
	var provs []*peerNode
	puller := newPeerNode(t, HostConfig{}, nil)
	for range 3 {
		p := newPeerNode(t, HostConfig{}, nil)
		if _, err := p.b.AddBytes(ctx, data); err != nil {
			t.Fatal(err)
		}
		mustConnect(t, puller.h, p.h)
		provs = append(provs, p)
	}
	victim := provs[0]
	var once sync.Once
	killed := make(chan struct{})
	puller.x.net.mu.Lock()
	puller.x.net.onBlock = func(p peer.ID, _ blocks.Block) {
		if p == victim.h.ID() {
			once.Do(func() {
				go func() { victim.leave(); close(killed) }()
			})
		}
	}
	puller.x.net.mu.Unlock()
	st, err := puller.x.Fetch(ctx, CIDOf(data), Limits{Idle: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-killed:
	default:
		t.Fatal("the victim delivered nothing before the fetch ended")
	}
	if got, _ := puller.b.Get(ctx, CIDOf(data), 0); !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
	t.Logf("blocks per provider: %v (victim %s)", st.Peers, victim.h.ID())
}

// TestKeep: a kept file is fetched, pinned (GC leaves it) and served after
// its publisher is gone.
func TestKeep(t *testing.T) {
	ctx := testCtx(t)
	origin, keeper, late := newPeerNode(t, HostConfig{}, nil), newPeerNode(t, HostConfig{}, nil), newPeerNode(t, HostConfig{}, nil)
	data := randomBlob(2*ChunkSize+5, 12)
	c, _ := origin.b.AddBytes(ctx, data)
	mustConnect(t, keeper.h, origin.h)
	if err := keeper.x.Keep(ctx, c, Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	if res, err := keeper.b.GC(ctx, nil); err != nil || res.Removed != 0 || !keeper.b.Has(ctx, c) {
		t.Fatalf("GC after Keep: %+v, %v", res, err)
	}
	origin.leave()
	mustConnect(t, late.h, keeper.h)
	if _, err := late.x.Fetch(ctx, c, Limits{}); err != nil {
		t.Fatalf("from the keeper: %v", err)
	}
}

// TestOpenBlocksUnfinished: a process killed while flatfs created the
// store (the directory made, its SHARDING file missing or half written)
// leaves a store that opens afresh; a directory that holds blocks but no
// SHARDING file is not removed.
func TestOpenBlocksUnfinished(t *testing.T) {
	for name, sharding := range map[string]string{"no SHARDING file": "", "half written": "/repo/flatfs/shard/v1/next-to"} {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "blocks"), 0o755); err != nil {
			t.Fatal(err)
		}
		if sharding != "" {
			if err := os.WriteFile(filepath.Join(dir, "blocks", "SHARDING"), []byte(sharding), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b, err := OpenBlocks(dir)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := b.AddBytes(context.Background(), []byte("x")); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b.Close()
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "blocks", "AB"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBlocks(dir); err == nil {
		t.Fatal("a store with block directories and no SHARDING file opened")
	}
	if _, err := os.Stat(filepath.Join(dir, "blocks", "AB")); err != nil {
		t.Fatalf("its blocks were removed: %v", err)
	}
}
