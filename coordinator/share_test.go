package coordinator

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"
	bolt "go.etcd.io/bbolt"

	"carryon/dataset"
	"carryon/internal/testenv"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
	"carryon/tensor"
)

// shareKey makes a private swarm's key: its text (swarm.key) and PSK.
func shareKey(t *testing.T) ([]byte, pnet.PSK) {
	t.Helper()
	text, psk, err := protocol.NewSwarmPSK()
	if err != nil {
		t.Fatal(err)
	}
	return text, psk
}

// hostCoordinator builds a coordinator on a real libp2p host (loopback, the
// swarm's PSK) with its cache in dir.
func hostCoordinator(t *testing.T, psk pnet.PSK, dir string, b *model.Base, layers []int) (*Coordinator, host.Host) {
	t.Helper()
	h, err := swarm.NewHost(swarm.HostConfig{PSK: psk, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{CacheDir: dir, Codec: "q8", Layers: layers, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Train: TrainConfig{Steps: 4, BatchSeqs: 2, EvalEvery: 2}}
	c, err := New(h, nil, b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); h.Close() })
	return c, h
}

func connect(t *testing.T, from, to host.Host) {
	t.Helper()
	if err := from.Connect(context.Background(), peer.AddrInfo{ID: to.ID(), Addrs: to.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

// sharingPeer is a coordinator on a real host that has computed the
// embeddings (final layer and layer 1) of a small data set, for others to
// fetch.
type sharingPeer struct {
	b      *model.Base
	ds     *dataset.Set
	psk    pnet.PSK
	layers []int
	c      *Coordinator
	h      host.Host
}

func newSharingPeer(t *testing.T, records int) sharingPeer {
	sp := sharingPeer{b: localBase(t), ds: localData(t, records), layers: []int{model.FinalLayer, 1}}
	_, sp.psk = shareKey(t)
	sp.c, sp.h = hostCoordinator(t, sp.psk, t.TempDir(), sp.b, sp.layers)
	collectLocal(t, sp.c, sp.ds)
	return sp
}

// fetcher returns a second coordinator of the same swarm, base and layers,
// with an empty cache, connected to the peer.
func (sp sharingPeer) fetcher(t *testing.T) *Coordinator {
	c, h := hostCoordinator(t, sp.psk, t.TempDir(), sp.b, sp.layers)
	connect(t, h, sp.h)
	return c
}

// TestFetchCached: a second coordinator with the same base and data fetches
// the first one's cached embeddings by CID over bitswap (real hosts, real
// bbolt and flatfs stores), computes none of them again, holds byte-identical
// frames under the same CIDs, and trains exactly the adaptor the first one
// trains; chunks the first one lacks are reported missing and computed.
func TestFetchCached(t *testing.T) {
	sp := newSharingPeer(t, 24)
	b, ds, layers, a, ha := sp.b, sp.ds, sp.layers, sp.c, sp.h
	all := ds.All()
	lacking := all[len(all)-1]
	if err := a.drop(a.primary(), lacking); err != nil { // a does not hold this one
		t.Fatal(err)
	}

	bc := sp.fetcher(t)
	var calls int
	rep, err := bc.FetchCached(context.Background(), ds, FetchConfig{From: ha.ID(), Verify: 2}, func(FetchReport) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	held, total := a.CacheStatus(ds)
	if rep.Chunks != total || rep.Fetched != held || rep.Missing != 1 || rep.Cached != 0 || rep.Verified != 2 || calls != rep.Fetched {
		t.Fatalf("report %+v (progress calls %d); want %d chunks, %d fetched, 1 missing, 2 verified", rep, calls, total, held)
	}
	if rep.Tokens <= 0 || rep.Bytes <= 0 || rep.TokensPerSec() <= 0 {
		t.Fatalf("report %+v: no tokens or bytes counted", rep)
	}
	for _, ch := range all {
		if ch.ID == lacking.ID {
			if bc.cached(ch) {
				t.Fatal("the chunk the peer lacks is indexed")
			}
			continue
		}
		for _, l := range layers {
			k := bc.key(l, ch)
			ida, _ := a.cache.CID(k)
			idb, err := bc.cache.CID(k)
			if err != nil || ida != idb {
				t.Fatalf("chunk %s layer %d: CID %v (%v), the peer's %v", short(ch.ID), l, idb, err, ida)
			}
			if !bytes.Equal(frameOf(t, a.cache, k), frameOf(t, bc.cache, k)) {
				t.Fatalf("chunk %s layer %d: frames differ", short(ch.ID), l)
			}
		}
	}
	// Only the chunk the peer lacks is computed.
	cb := &countingBase{b: b}
	if err := bc.CollectLocal(context.Background(), ds, cb, nil); err != nil {
		t.Fatal(err)
	}
	if got := cb.calls.Load(); got != int64(len(lacking.Seqs)) {
		t.Fatalf("%d forward passes after the fetch, want %d (the lacking chunk's sequences)", got, len(lacking.Seqs))
	}
	// A second fetch has nothing to do.
	if rep, err := bc.FetchCached(context.Background(), ds, FetchConfig{From: ha.ID()}, nil); err != nil || rep.Cached != total || rep.Fetched != 0 {
		t.Fatalf("second fetch: %+v, %v", rep, err)
	}
	// Training on fetched embeddings is training on computed ones.
	collectLocal(t, a, ds)
	ra, err := a.Train(context.Background(), ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := bc.Train(context.Background(), ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(adaptorBytes(t, ra), adaptorBytes(t, rb)) {
		t.Fatal("the adaptor trained on fetched embeddings differs from the one trained on computed embeddings")
	}

	// HeldFrames names each frame bc can serve once: every fetched or
	// computed one, and not one whose block is gone.
	want := map[cid.Cid]bool{}
	for _, ch := range all {
		for _, l := range layers {
			id, err := bc.cache.CID(bc.key(l, ch))
			if err != nil {
				t.Fatal(err)
			}
			want[id] = true
		}
	}
	var gone cid.Cid
	for id := range want {
		gone = id
		break
	}
	if err := bc.store.Blockstore().DeleteBlock(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	delete(want, gone)
	got, err := bc.HeldFrames(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[cid.Cid]bool{}
	for _, id := range got {
		if !want[id] || seen[id] {
			t.Fatalf("HeldFrames names %s: not held, or twice (%d names, want the %d held)", id, len(got), len(want))
		}
		seen[id] = true
	}
	if len(got) != len(want) {
		t.Fatalf("HeldFrames names %d frames, want the %d held", len(got), len(want))
	}
}

// TestFetchCachedLiars: a peer whose index names a frame of the wrong shape,
// or of the right shape but other values (another layer's), is caught:
// the fetch fails saying so and indexes nothing of that chunk.
func TestFetchCachedLiars(t *testing.T) {
	sp := newSharingPeer(t, 9)
	b, ds, a, ha := sp.b, sp.ds, sp.c, sp.h
	ch := ds.All()[0]
	repoint := func(k Key, id string) {
		err := a.state.write(func(tx *bolt.Tx) error {
			return putJSON(tx.Bucket(bChunks), keyBytes(k), chunkRecord{CID: id, UnixMilli: time.Now().UnixMilli()})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	codec, _ := tensor.ParseCodec("q8")
	wrong, err := a.store.AddBytes(context.Background(), encodeFrame(testEntries(t, codec, b.Config.Dim+1, 3)))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := a.cache.CID(a.key(1, ch))
	for _, tc := range []struct {
		name, cid, want string
	}{
		{"wrong shape", wrong.String(), "does not fit the chunk"},
		{"another layer's frame", other.String(), "differ from this base's forward pass"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repoint(a.key(model.FinalLayer, ch), tc.cid)
			bc := sp.fetcher(t)
			_, err := bc.FetchCached(context.Background(), ds, FetchConfig{From: ha.ID(), Verify: 100, Parallel: 1}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
			if bc.cached(ch) {
				t.Fatal("the lying peer's chunk was indexed")
			}
		})
	}
}

// TestCacheQueryProtocol: the index stream answers in order, "" for what
// it lacks, several queries on one stream; a malformed query gets the
// stream reset and no answer.
func TestCacheQueryProtocol(t *testing.T) {
	b := localBase(t)
	ds := localData(t, 6)
	_, psk := shareKey(t)
	a, ha := hostCoordinator(t, psk, t.TempDir(), b, nil)
	collectLocal(t, a, ds)
	hb, err := swarm.NewHost(swarm.HostConfig{PSK: psk})
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	connect(t, hb, ha)
	s, err := hb.NewStream(context.Background(), ha.ID(), protocol.CacheProtocol)
	if err != nil {
		t.Fatal(err)
	}
	ch := ds.All()[0]
	absent := strings.Repeat("0", 64)
	want, _ := a.cache.CID(a.key(model.FinalLayer, ch))
	for range 2 {
		q := &protocol.CacheQuery{V: protocol.Version, Base: b.WeightsHash, Codec: "q8", Layer: model.FinalLayer, Chunks: []string{absent, ch.ID}}
		if err := protocol.WriteFrame(s, q); err != nil {
			t.Fatal(err)
		}
		idx, err := protocol.ReadExpect[*protocol.CacheIndex](s)
		if err != nil {
			t.Fatal(err)
		}
		if len(idx.CIDs) != 2 || idx.CIDs[0] != "" || idx.CIDs[1] != want.String() {
			t.Fatalf("answer %q, want [\"\" %s]", idx.CIDs, want)
		}
	}
	// Another layer, another codec: not held.
	q := &protocol.CacheQuery{V: protocol.Version, Base: b.WeightsHash, Codec: "q4", Layer: model.FinalLayer, Chunks: []string{ch.ID}}
	protocol.WriteFrame(s, q)
	if idx, err := protocol.ReadExpect[*protocol.CacheIndex](s); err != nil || idx.CIDs[0] != "" {
		t.Fatalf("q4 answer %v, %v: want not held", idx, err)
	}
	// A frame that is not a CacheQuery ends the stream.
	s.Write([]byte{byte(protocol.TypeCacheQuery), 1, 0, 0, 0, 1, 0x90})
	if _, err := protocol.ReadExpect[*protocol.CacheIndex](s); err == nil {
		t.Fatal("a malformed query was answered")
	}
	s.Close()
}

// TestCacheDirLsGC: ls lists every index entry with its CID and size; gc
// removes blocks nothing refers to (a cut-short import, a dropped chunk's
// frames), entries older than the limit and their blocks, and keeps every
// indexed frame and every pinned adaptor.
// collectedCache returns a q8 coordinator (final layer) that has computed
// the embeddings of 9 records into a new cache directory, with its base,
// data and directory.
func collectedCache(t *testing.T) (*model.Base, *dataset.Set, string, *Coordinator) {
	b, ds, dir := localBase(t), localData(t, 9), t.TempDir()
	c := localCoordinator(t, dir, b, "q8", nil)
	collectLocal(t, c, ds)
	return b, ds, dir, c
}

func TestCacheDirLsGC(t *testing.T) {
	b, ds, dir, c := collectedCache(t)
	ctx := context.Background()
	adaptor, err := c.store.AddBytes(ctx, bytes.Repeat([]byte("adaptor "), 100000))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.store.Pin(ctx, adaptor, "adaptor step 1"); err != nil {
		t.Fatal(err)
	}
	orphan, err := c.store.AddBytes(ctx, []byte("blocks of a fetch whose index entry never committed"))
	if err != nil {
		t.Fatal(err)
	}
	all := ds.All()
	dropped := all[0]
	droppedCID, _ := c.cache.CID(c.key(model.FinalLayer, dropped))
	if err := c.drop(c.primary(), dropped); err != nil {
		t.Fatal(err)
	}
	old := all[1]
	oldKey := c.key(model.FinalLayer, old)
	oldCID, _ := c.cache.CID(oldKey)
	err = c.state.write(func(tx *bolt.Tx) error { // indexed two days ago
		return putJSON(tx.Bucket(bChunks), keyBytes(oldKey), chunkRecord{CID: oldCID.String(), Bytes: 1, UnixMilli: time.Now().Add(-48 * time.Hour).UnixMilli()})
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	d, err := OpenCacheDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	items, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, total := c.CacheStatus(ds)
	if len(items) != total-1 {
		t.Fatalf("%d index entries, want %d", len(items), total-1)
	}
	if items[0].Key != oldKey || items[0].CID != oldCID.String() {
		t.Fatalf("oldest entry %+v, want %v", items[0], oldKey)
	}
	for _, it := range items {
		if !it.Stored || it.Bytes <= 0 || it.Key.Codec != "q8" || it.Key.Base != b.WeightsHash {
			t.Fatalf("entry %+v", it)
		}
	}
	// A dry run lists what gc removes, sizes included, and removes nothing.
	dry, err := d.GC(ctx, GCOptions{OlderThan: 24 * time.Hour, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	blocksBefore, bytesBefore, _ := d.StoreUsage(ctx)
	if again, _ := d.List(ctx); len(again) != len(items) || !dry.DryRun {
		t.Fatalf("the dry run changed the index: %d entries, had %d", len(again), len(items))
	}
	for _, g := range dry.Blocks.RemovedBlocks {
		if !d.store.Has(ctx, g.CID) || g.Size <= 0 {
			t.Fatalf("the dry run removed block %s (%d bytes)", g.CID, g.Size)
		}
	}
	rep, err := d.GC(ctx, GCOptions{OlderThan: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if rep.DryRun || !reflect.DeepEqual(dry.Blocks, rep.Blocks) || !reflect.DeepEqual(dry.Expired, rep.Expired) || !reflect.DeepEqual(dry.Broken, rep.Broken) {
		t.Fatalf("gc removed %+v; its dry run said %+v", rep, dry)
	}
	if blocksAfter, bytesAfter, _ := d.StoreUsage(ctx); blocksBefore-blocksAfter != rep.Blocks.Removed || bytesBefore-bytesAfter != rep.Blocks.RemovedBytes {
		t.Fatalf("the store went from %d blocks (%d bytes) to %d (%d); gc says it removed %d (%d)", blocksBefore, bytesBefore,
			blocksAfter, bytesAfter, rep.Blocks.Removed, rep.Blocks.RemovedBytes)
	}
	if len(rep.Expired) != 1 || rep.Expired[0].Key != oldKey || len(rep.Broken) != 0 {
		t.Fatalf("expired %v, broken %v; want only %v", rep.Expired, rep.Broken, oldKey)
	}
	removed := map[string]bool{}
	for _, g := range rep.Blocks.RemovedBlocks {
		removed[string(g.CID.Hash())] = true
	}
	for name, id := range map[string]string{"orphan": string(orphan.Hash()), "dropped": string(droppedCID.Hash()), "expired": string(oldCID.Hash())} {
		if !removed[id] {
			t.Errorf("the %s frame's block was not removed", name)
		}
	}
	if len(removed) != 3 || rep.Blocks.Removed != 3 {
		t.Errorf("%d blocks removed, want 3 (frames of this size are one raw block each)", rep.Blocks.Removed)
	}
	if !d.store.Has(ctx, adaptor) {
		t.Error("gc removed the pinned adaptor")
	}
	items, _ = d.List(ctx)
	for _, it := range items {
		if !it.Stored {
			t.Errorf("gc removed blocks of the indexed %v", it.Key)
		}
	}
	if len(items) != total-2 {
		t.Errorf("%d entries after gc, want %d", len(items), total-2)
	}
	// A second gc finds nothing.
	if rep, err := d.GC(ctx, GCOptions{}); err != nil || rep.Blocks.Removed != 0 || len(rep.Expired)+len(rep.Broken) != 0 {
		t.Fatalf("second gc: %+v, %v", rep, err)
	}
	if _, err := OpenCacheDir(filepath.Join(dir, "nothing")); err == nil || !strings.Contains(err.Error(), "no coordinator state") {
		t.Fatalf("a directory without state: %v", err)
	}
}

// TestImportLegacyCache: a cache directory of an older carryon (payload
// files under embeddings/, indexed without CIDs) is imported into the block
// store on start: same entries, files gone, a damaged file's chunk dropped
// from the index (it is computed again).
func TestImportLegacyCache(t *testing.T) {
	b, ds, dir, c := collectedCache(t)
	// Turn it into the old layout.
	all := ds.All()
	for i, ch := range all {
		k := c.key(model.FinalLayer, ch)
		frame := frameOf(t, c.cache, k)
		if i == 1 {
			frame = frame[:len(frame)-1] // torn
		}
		p := legacyPath(dir, k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, frame, 0o644); err != nil {
			t.Fatal(err)
		}
		c.state.write(func(tx *bolt.Tx) error {
			return putJSON(tx.Bucket(bChunks), keyBytes(k), chunkRecord{UnixMilli: 1})
		})
	}
	c.Close()
	os.RemoveAll(StoreDir(dir))
	c = localCoordinator(t, dir, b, "q8", nil)
	cached, total := c.CacheStatus(ds)
	if cached != total-1 {
		t.Fatalf("%d of %d chunks cached after the import, want all but the torn one", cached, total)
	}
	for i, ch := range all {
		if i == 1 {
			continue
		}
		if _, err := c.cache.Get(c.key(model.FinalLayer, ch)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(legacyPath(dir, c.key(model.FinalLayer, all[0]))); !os.IsNotExist(err) {
		t.Fatalf("an imported file is still there: %v", err)
	}
}

// TestKuboFetchesCachedEmbedding: Kubo, in the same private swarm, fetches
// a cached embedding frame by its CID from the coordinator over bitswap,
// byte for byte (`ipfs cat`). Needs Kubo (see testenv.KuboBin).
func TestKuboFetchesCachedEmbedding(t *testing.T) {
	keyText, psk := shareKey(t)
	k := testenv.NewKubo(t, keyText)
	addr := k.Daemon()
	b := localBase(t)
	ds := localData(t, 6)
	c, h := hostCoordinator(t, psk, t.TempDir(), b, nil)
	collectLocal(t, c, ds)
	ai, err := peer.AddrInfoFromP2pAddr(ma.StringCast(addr))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Connect(context.Background(), *ai); err != nil {
		t.Fatalf("coordinator → Kubo in the private swarm: %v", err)
	}
	key := c.key(model.FinalLayer, ds.All()[0])
	id, err := c.cache.CID(key)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "frame")
	if _, err := k.Try(time.Minute, "get", "-o", out, id.String()); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if want := frameOf(t, c.cache, key); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("ipfs get %s: %d bytes (%v), want the %d-byte frame byte for byte", id, len(got), err, len(want))
	}
}
