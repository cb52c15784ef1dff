package coordinator

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"carryon/swarm"
	"carryon/tensor"

	"github.com/ipfs/go-cid"
	bolt "go.etcd.io/bbolt"
)

// testEntries encodes n sequences of (rows_i, dim) values with codec.
func testEntries(t testing.TB, codec tensor.Codec, dim int, rows ...int) []Entry {
	t.Helper()
	var es []Entry
	for s, r := range rows {
		x := make([]float32, r*dim)
		for i := range x {
			x[i] = float32((i*31+s*7)%23) - 11
		}
		es = append(es, Entry{Rows: r, Dim: dim, Data: codec.Encode(nil, x, r, dim)})
	}
	return es
}

// newTestCache opens a cache (block store and state store) in dir.
func newTestCache(t testing.TB, dir string) *Cache {
	t.Helper()
	store, err := swarm.OpenBlocks(StoreDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	state := openTestState(t, filepath.Join(dir, "state.db"), dir)
	t.Cleanup(func() { state.close(); store.Close() })
	return &Cache{blocks: store, state: state}
}

// openTestState opens the state store at path (syncing dir), committing
// groups of up to 16 writes after 1 ms, and fails t on an error.
func openTestState(t testing.TB, path, dir string) *stateStore {
	t.Helper()
	s, _, err := openState(path, dir, 16, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// frameOf returns the stored frame of k.
func frameOf(t testing.TB, c *Cache, k Key) []byte {
	t.Helper()
	id, err := c.CID(k)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.blocks.Get(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCacheRoundTrip(t *testing.T) {
	dir := t.TempDir()
	c := newTestCache(t, dir)
	for _, name := range []string{"q8", "q4g64", "bf16"} {
		codec, err := tensor.ParseCodec(name)
		if err != nil {
			t.Fatal(err)
		}
		k := Key{Base: strings.Repeat("b", 64), Codec: codec.String(), Layer: -1, Chunk: strings.Repeat("c", 64)}
		if c.Has(k) {
			t.Fatalf("%s: Has before Put", name)
		}
		if _, err := c.Get(k); err == nil {
			t.Fatalf("%s: Get of a missing key succeeded", name)
		}
		want := testEntries(t, codec, 64, 3, 1, 17)
		if err := c.Put(k, want); err != nil {
			t.Fatal(err)
		}
		other := k
		other.Layer = 2
		if !c.Has(k) || c.Has(other) {
			t.Fatalf("%s: Has after Put: %v, other layer %v", name, c.Has(k), c.Has(other))
		}
		got, err := c.Get(k)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d entries, want %d", name, len(got), len(want))
		}
		for i := range got {
			if got[i].Rows != want[i].Rows || got[i].Dim != want[i].Dim || !bytes.Equal(got[i].Data, want[i].Data) {
				t.Fatalf("%s: entry %d differs", name, i)
			}
		}
		// The frame is content: its CID is what `ipfs add --cid-version=1
		// --raw-leaves` gives the same bytes, and the index names it.
		frame := encodeFrame(want)
		id, err := c.CID(k)
		if err != nil || id != swarm.CIDOf(frame) {
			t.Fatalf("%s: index names %v (%v), want the frame's CID %s", name, id, err, swarm.CIDOf(frame))
		}
		if len(frame) <= swarm.ChunkSize == (id.Prefix().Codec != cid.Raw) {
			t.Fatalf("%s: a %d-byte frame has codec %x", name, len(frame), id.Prefix().Codec)
		}
	}
}

func TestCacheRejectsDamage(t *testing.T) {
	dir := t.TempDir()
	c := newTestCache(t, dir)
	codec, _ := tensor.ParseCodec("q8")
	k := Key{Base: "ab", Codec: codec.String(), Layer: -1, Chunk: "cd"}
	if err := c.Put(k, testEntries(t, codec, 32, 4, 5)); err != nil {
		t.Fatal(err)
	}
	good := frameOf(t, c, k)
	// Every truncation is rejected (a torn write that reached the disk).
	for n := range len(good) {
		if _, err := parseCacheFile(good[:n], codec); err == nil {
			t.Fatalf("a file truncated to %d of %d bytes parsed", n, len(good))
		}
	}
	set32 := func(off int, v uint32) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b[off:], v)
		return b
	}
	hdr := len(cacheMagic) + 4
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"magic", append([]byte("XXEMB\x01"), good[6:]...), "bad magic"},
		{"version", append([]byte("COEMB\x02"), good[6:]...), "bad magic"},
		{"count", set32(len(cacheMagic), 1<<30), "do not fit"},
		{"rows", set32(hdr, 5), "inconsistent"},
		{"nbytes", set32(hdr+8, 1), "inconsistent"},
		{"trailing", append(bytes.Clone(good), 0), "1 trailing bytes"},
	} {
		// A damaged frame is a different file: index it as k's.
		id, err := c.blocks.AddBytes(context.Background(), tc.data)
		if err != nil {
			t.Fatal(err)
		}
		c.state.write(func(tx *bolt.Tx) error {
			return putJSON(tx.Bucket(bChunks), keyBytes(k), chunkRecord{CID: id.String(), UnixMilli: 1})
		})
		_, err = c.Get(k)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "coordinator.Cache.Get") {
			t.Errorf("%s: err %v, want one from coordinator.Cache.Get containing %q", tc.name, err, tc.want)
		}
	}
	// A file of another codec is rejected by its sizes.
	bf, _ := tensor.ParseCodec("bf16")
	if _, err := parseCacheFile(good, bf); err == nil {
		t.Error("a q8 file parsed as bf16")
	}
}

func FuzzParseCacheFile(f *testing.F) {
	codec, _ := tensor.ParseCodec("q8")
	good := encodeFrame(testEntries(f, codec, 8, 2, 3))
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add([]byte("COEMB\x01\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := parseCacheFile(b, codec)
		if err != nil {
			return
		}
		total := len(cacheMagic) + 4
		for _, e := range es {
			if len(e.Data) != codec.EncodedSize(e.Rows, e.Dim) {
				t.Fatalf("entry of %d×%d holds %d bytes", e.Rows, e.Dim, len(e.Data))
			}
			total += 12 + len(e.Data)
		}
		if total != len(b) {
			t.Fatalf("entries account for %d of %d bytes", total, len(b))
		}
	})
}
