package coordinator

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ipfs/go-cid"
	bolt "go.etcd.io/bbolt"

	"carryon/dataset"
	"carryon/internal/atomicfile"
	"carryon/protocol"
	"carryon/swarm"
	"carryon/tensor"
)

// Cache is the embedding cache as content: each cached (chunk, layer) is
// one frame of bridged embeddings (the layout below), added to the
// coordinator's block store (swarm.Blocks, the same flatfs blockstore that
// holds the adaptors) as a UnixFS file, CIDv1 with raw leaves, exactly as
// `ipfs add --cid-version=1 --raw-leaves` would lay it out. The state store
// (bbolt) indexes it: key (base weights hash, bridge codec, layer, chunk
// hash) → CID, size and who computed it. Bitswap serves the blocks to any
// peer of the swarm, Kubo included, so a second trainer fetches a cached
// chunk by CID instead of recomputing it (FetchCached).
//
// A frame counts only once the index names it: its blocks are written
// (and fsynced by flatfs) before the index entry commits, so a crash in
// between leaves unreferenced blocks, which `carryon cache gc` removes.
// Identical frames share their blocks; dropping an index entry leaves its
// blocks for the garbage collection, which keeps every block that an
// index entry or a pinned adaptor still reaches.
type Cache struct {
	blocks *swarm.Blocks
	state  *stateStore
}

// Layout of one frame, little-endian:
//
//	magic "COEMB\x01" | u32 nseqs | nseqs × (u32 rows | u32 dim | u32 nbytes | payload)
//
// payload is the codec's encoding of a (rows, dim) matrix.
var cacheMagic = []byte("COEMB\x01")

// Key names one cached item.
type Key struct {
	Base  string // the base's EmbedHash (its WeightsHash for exact products)
	Codec string // bridge codec name
	Layer int    // model.FinalLayer or a block index
	Chunk string // chunk hash
}

// Entry is one sequence's bridged hidden states.
type Entry struct {
	Rows, Dim int
	Data      []byte
}

// encodeFrame lays entries out as one cache frame.
func encodeFrame(entries []Entry) []byte {
	n := len(cacheMagic) + 4
	for _, e := range entries {
		n += 12 + len(e.Data)
	}
	b := make([]byte, 0, n)
	b = append(b, cacheMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Rows))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Dim))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Data)))
		b = append(b, e.Data...)
	}
	return b
}

// frameSize is the length of the frame of sequences of the given lengths,
// each (rows, dim) encoded by codec: what a fetch may accept at most.
func frameSize(codec tensor.Codec, dim int, rows []int) int64 {
	n := int64(len(cacheMagic) + 4)
	for _, r := range rows {
		n += 12 + int64(codec.EncodedSize(r, dim))
	}
	return n
}

// Has reports whether k is indexed.
func (c *Cache) Has(k Key) bool { return c.state.hasChunks([]Key{k}) }

// Put adds the entries of k to the block store and indexes them (durable
// when it returns). The coordinator's own writes go through put, which
// indexes a chunk's layers together in a group commit.
func (c *Cache) Put(k Key, entries []Entry) error {
	id, size, err := c.add(k, entries)
	if err != nil {
		return err
	}
	rec := chunkRecord{CID: id.String(), Bytes: size, UnixMilli: time.Now().UnixMilli()}
	if err := c.state.write(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bChunks), keyBytes(k), rec) }); err != nil {
		return fmt.Errorf("coordinator.Cache.Put: %w", err)
	}
	return nil
}

// add writes the frame of entries to the block store (durably) and returns
// its CID and length.
func (c *Cache) add(k Key, entries []Entry) (cid.Cid, int64, error) {
	b := encodeFrame(entries)
	id, err := c.blocks.AddBytes(context.Background(), b)
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("coordinator.Cache.Put %s: %w", short(k.Chunk), err)
	}
	return id, int64(len(b)), nil
}

// record reads k's index entry.
func (c *Cache) record(k Key) (chunkRecord, bool, error) {
	var r chunkRecord
	found := false
	err := c.state.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bChunks).Get(keyBytes(k))
		if v == nil {
			return nil
		}
		found = true
		return json.Unmarshal(v, &r)
	})
	return r, found, err
}

// CID returns the CID of k's frame.
func (c *Cache) CID(k Key) (cid.Cid, error) {
	r, ok, err := c.record(k)
	if err != nil {
		return cid.Undef, fmt.Errorf("coordinator.Cache.CID: %w", err)
	}
	if !ok {
		return cid.Undef, fmt.Errorf("coordinator.Cache.CID: chunk %s layer %d: %w", short(k.Chunk), k.Layer, swarm.ErrNotFound)
	}
	id, err := cid.Decode(r.CID)
	if err != nil {
		return cid.Undef, fmt.Errorf("coordinator.Cache.CID: chunk %s layer %d: index entry without a valid CID (%q): %w", short(k.Chunk), k.Layer, r.CID, err)
	}
	return id, nil
}

// Get reads the entries of k from the block store (every block re-hashed)
// and checks every length against the codec.
func (c *Cache) Get(k Key) ([]Entry, error) {
	codec, err := tensor.ParseCodec(k.Codec)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Cache.Get: %w", err)
	}
	id, err := c.CID(k)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Cache.Get: %w", err)
	}
	b, err := c.blocks.Get(context.Background(), id, maxFrameBytes)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Cache.Get: %w", err)
	}
	es, err := parseCacheFile(b, codec)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Cache.Get %s (chunk %s layer %d): %w", id, short(k.Chunk), k.Layer, err)
	}
	return es, nil
}

// maxFrameBytes bounds a frame read from the store: 1 GiB, far above a
// chunk of the largest bases carryon trains (16 × 8192 tokens × 8192 wide
// in bf16 is 2 GiB, in q8 about 1 GiB).
const maxFrameBytes = 1 << 30

// parseCacheFile decodes a cache file; the entries alias b.
func parseCacheFile(b []byte, codec tensor.Codec) ([]Entry, error) {
	if len(b) < len(cacheMagic)+4 || string(b[:len(cacheMagic)]) != string(cacheMagic) {
		return nil, errors.New("not a cache file (bad magic)")
	}
	b = b[len(cacheMagic):]
	n := int(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if n > protocol.MaxSeqsPerChunk || n*12 > len(b) {
		return nil, fmt.Errorf("%d sequences do not fit the file", n)
	}
	es := make([]Entry, n)
	for i := range es {
		if len(b) < 12 {
			return nil, fmt.Errorf("sequence %d: truncated header", i)
		}
		rows, dim := int(binary.LittleEndian.Uint32(b)), int(binary.LittleEndian.Uint32(b[4:]))
		nb := int(binary.LittleEndian.Uint32(b[8:]))
		b = b[12:]
		if rows > protocol.MaxSeqLen || dim > protocol.MaxHiddenDim || nb != codec.EncodedSize(rows, dim) || nb > len(b) {
			return nil, fmt.Errorf("sequence %d: %d×%d with %d bytes is inconsistent with %s or the file", i, rows, dim, nb, codec)
		}
		es[i] = Entry{Rows: rows, Dim: dim, Data: b[:nb:nb]}
		b = b[nb:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%d trailing bytes", len(b))
	}
	return es, nil
}

// writeFileAtomic writes b to path (creating its directory) through a temp
// file and a rename. With durable, atomicfile's rule (fsync file, rename,
// fsync directory); without, the file is complete once visible but may be
// lost in a power cut until the file system is synced (the group commit's
// syncfs does that before the chunk is indexed).
func writeFileAtomic(path string, b []byte, durable bool) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if durable {
		return atomicfile.Write(path, b, 0o644)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}

// cacheKeys lists ch's keys for job, one per layer of the job.
func (c *Coordinator) cacheKeys(job embedJob, ch *dataset.Chunk) []Key {
	keys := make([]Key, len(job.Layers))
	for i, l := range job.Layers {
		keys[i] = job.key(l, ch)
	}
	return keys
}

// cached reports whether every layer of every job (the primary base's and
// the mixed ones') of ch is indexed as complete in the state store (a
// payload file without its index entry does not count: it may be torn, or
// not yet durable).
func (c *Coordinator) cached(ch *dataset.Chunk) bool {
	var keys []Key
	for _, j := range c.allJobs() {
		keys = append(keys, c.cacheKeys(j, ch)...)
	}
	return c.state.hasChunks(keys)
}

func (j embedJob) key(layer int, ch *dataset.Chunk) Key {
	return Key{Base: j.Base, Codec: j.Codec.String(), Layer: layer, Chunk: ch.ID}
}

// put adds a chunk's entries of job, indexed [layer][seq], to the block store
// and returns once they are durable and indexed (in a group commit with
// other chunks: see store.go). by is the node whose result it is ("" for
// the coordinator's own).
func (c *Coordinator) put(job embedJob, ch *dataset.Chunk, entries [][]Entry, by string, verified bool) error {
	keys := c.cacheKeys(job, ch)
	recs := make([]chunkRecord, len(keys))
	now := time.Now().UnixMilli()
	for i, k := range keys {
		id, size, err := c.cache.add(k, entries[i])
		if err != nil {
			return fmt.Errorf("coordinator: store chunk %s: %w", short(ch.ID), err)
		}
		recs[i] = chunkRecord{CID: id.String(), Bytes: size, Node: by, Verified: verified, UnixMilli: now}
	}
	lk := []byte(ch.ID)
	err := c.state.groupWrite(func(tx *bolt.Tx) error {
		if err := putChunkRecords(tx, keys, recs); err != nil {
			return err
		}
		return tx.Bucket(bLeases).Delete(lk)
	}, false) // flatfs fsyncs the blocks as it commits them
	if err != nil {
		return fmt.Errorf("coordinator: store chunk %s: %w", short(ch.ID), err)
	}
	if c.storeHook != nil {
		c.storeHook(ch.ID)
	}
	if c.cfg.OnCached != nil {
		for _, r := range recs {
			if id, err := cid.Decode(r.CID); err == nil {
				c.cfg.OnCached(id)
			}
		}
	}
	return nil
}

// drop removes a chunk from the index (a banned node's unverified
// result). Its blocks stay until `carryon cache gc`, which removes every
// block no index entry or pinned adaptor reaches (another key may share
// them).
func (c *Coordinator) drop(job embedJob, ch *dataset.Chunk) error {
	keys := c.cacheKeys(job, ch)
	err := c.state.write(func(tx *bolt.Tx) error {
		for _, k := range keys {
			if err := tx.Bucket(bChunks).Delete(keyBytes(k)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("coordinator: drop chunk %s: %w", short(ch.ID), err)
	}
	return nil
}

// legacyDir is where carryon kept cache payloads as files before they
// became content (one file per key: base16/codec/L<layer>/<chunk>.emb).
func legacyDir(cacheDir string) string { return filepath.Join(cacheDir, "embeddings") }

func legacyPath(cacheDir string, k Key) string {
	return filepath.Join(legacyDir(cacheDir), short(k.Base), k.Codec, "L"+strconv.Itoa(k.Layer), k.Chunk+".emb")
}

// importLegacy moves payload files of an older carryon into the block
// store: every index entry without a CID gets its file's frame added
// (checked first) and its CID recorded; the file is then removed. An entry
// whose file is missing or damaged is dropped from the index (its chunk
// will be computed again) and said.
func (c *Coordinator) importLegacy() error {
	dir := legacyDir(c.cfg.CacheDir)
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	type todo struct {
		key []byte
		rec chunkRecord
	}
	var list []todo
	err := c.state.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bChunks).ForEach(func(k, v []byte) error {
			var r chunkRecord
			if json.Unmarshal(v, &r) == nil && r.CID == "" {
				list = append(list, todo{append([]byte(nil), k...), r})
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("import cache files: %w", err)
	}
	var files []string
	imported, dropped := 0, 0
	for i := range list {
		k, err := parseKey(list[i].key)
		if err != nil {
			list[i].rec.CID = "-"
			continue
		}
		p := legacyPath(c.cfg.CacheDir, k)
		b, err := os.ReadFile(p)
		if err == nil {
			var codec tensor.Codec
			if codec, err = tensor.ParseCodec(k.Codec); err == nil {
				_, err = parseCacheFile(b, codec)
			}
		}
		if err == nil {
			var id cid.Cid
			if id, err = c.store.AddBytes(context.Background(), b); err == nil {
				list[i].rec.CID, list[i].rec.Bytes = id.String(), int64(len(b))
				files = append(files, p)
				imported++
				continue
			}
		}
		c.log.Warn("old cache file not imported: its chunk will be computed again", "file", p, "err", err)
		list[i].rec.CID = "-"
		dropped++
	}
	err = c.state.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bChunks)
		for _, t := range list {
			if t.rec.CID == "-" {
				if err := b.Delete(t.key); err != nil {
					return err
				}
				continue
			}
			if err := putJSON(b, t.key, t.rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("import cache files: %w", err)
	}
	for _, f := range files {
		os.Remove(f)
	}
	removeEmptyDirs(dir)
	if imported+dropped > 0 {
		c.log.Info("cache files of an older carryon imported into the block store", "imported", imported, "dropped", dropped, "dir", dir)
	}
	return nil
}

// removeEmptyDirs removes dir and the directories under it that hold no
// files (deepest first); a directory with files is left.
func removeEmptyDirs(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.IsDir() {
			removeEmptyDirs(filepath.Join(dir, e.Name()))
		}
	}
	os.Remove(dir) // fails, as it should, when files remain
}
