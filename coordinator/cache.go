package coordinator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"carryon/dataset"
	"carryon/internal/atomicfile"
	"carryon/protocol"
	"carryon/tensor"

	bolt "go.etcd.io/bbolt"
)

// Cache stores bridged embeddings on disk, one file per (base weights hash,
// bridge codec, layer, chunk hash), so that a chunk enters the training set
// once, survives a crash, and every epoch reads the cache, never the
// network. Files are written atomically (temp file, fsync, rename): a file
// that exists is complete.
type Cache struct {
	dir string
}

// Layout of one cache file, little-endian:
//
//	magic "COEMB\x01" | u32 nseqs | nseqs × (u32 rows | u32 dim | u32 nbytes | payload)
//
// payload is the codec's encoding of a (rows, dim) matrix.
var cacheMagic = []byte("COEMB\x01")

// OpenCache opens (creating) a cache rooted at dir.
func OpenCache(dir string) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("coordinator.OpenCache: %w", err)
	}
	return &Cache{dir: dir}, nil
}

// Key names one cached item.
type Key struct {
	Base  string // weights hash
	Codec string // bridge codec name
	Layer int    // model.FinalLayer or a block index
	Chunk string // chunk hash
}

func (c *Cache) path(k Key) string {
	return filepath.Join(c.dir, short(k.Base), k.Codec, "L"+strconv.Itoa(k.Layer), k.Chunk+".emb")
}

// Has reports whether k is cached.
func (c *Cache) Has(k Key) bool {
	_, err := os.Stat(c.path(k))
	return err == nil
}

// Entry is one sequence's bridged hidden states.
type Entry struct {
	Rows, Dim int
	Data      []byte
}

// Put writes the entries of k atomically and durably (fsync).
func (c *Cache) Put(k Key, entries []Entry) error { return c.write(k, entries, true) }

// write writes the entries of k through a temp file and a rename; fsync
// only when durable (else the owner syncs the file system later).
func (c *Cache) write(k Key, entries []Entry, durable bool) error {
	b := append([]byte(nil), cacheMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Rows))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Dim))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Data)))
		b = append(b, e.Data...)
	}
	p := c.path(k)
	if err := writeFileAtomic(p, b, durable); err != nil {
		return fmt.Errorf("coordinator.Cache.Put: %w", err)
	}
	return nil
}

// Get reads the entries of k, checking every length against the codec.
func (c *Cache) Get(k Key) ([]Entry, error) {
	codec, err := tensor.ParseCodec(k.Codec)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Cache.Get: %w", err)
	}
	b, err := os.ReadFile(c.path(k))
	if err != nil {
		return nil, fmt.Errorf("coordinator.Cache.Get: %w", err)
	}
	es, err := parseCacheFile(b, codec)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Cache.Get %s: %w", c.path(k), err)
	}
	return es, nil
}

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

// cacheKeys lists ch's keys, one per configured layer.
func (c *Coordinator) cacheKeys(ch *dataset.Chunk) []Key {
	keys := make([]Key, len(c.cfg.Layers))
	for i, l := range c.cfg.Layers {
		keys[i] = c.key(l, ch)
	}
	return keys
}

// cached reports whether every layer of ch is indexed as complete in the
// state store (a payload file without its index entry does not count: it
// may be torn, or not yet durable).
func (c *Coordinator) cached(ch *dataset.Chunk) bool { return c.state.hasChunks(c.cacheKeys(ch)) }

func (c *Coordinator) key(layer int, ch *dataset.Chunk) Key {
	return Key{Base: c.base.WeightsHash, Codec: c.codec.String(), Layer: layer, Chunk: ch.ID}
}

// put writes a chunk's entries, indexed [layer][seq], to the cache and
// returns once they are durable and indexed (in a group commit with other
// chunks: see store.go). by is the node whose result it is ("" for the
// coordinator's own).
func (c *Coordinator) put(ch *dataset.Chunk, entries [][]Entry, by string, verified bool) error {
	keys := c.cacheKeys(ch)
	for i, k := range keys {
		if err := c.cache.write(k, entries[i], payloadsFsynced); err != nil {
			return fmt.Errorf("coordinator: store chunk %s: %w", short(ch.ID), err)
		}
	}
	rec := chunkRecord{Node: by, Verified: verified, UnixMilli: time.Now().UnixMilli()}
	lk := []byte(ch.ID)
	err := c.state.groupWrite(func(tx *bolt.Tx) error {
		b := tx.Bucket(bChunks)
		for _, k := range keys {
			if err := putJSON(b, keyBytes(k), rec); err != nil {
				return err
			}
		}
		return tx.Bucket(bLeases).Delete(lk)
	}, !payloadsFsynced)
	if err != nil {
		return fmt.Errorf("coordinator: store chunk %s: %w", short(ch.ID), err)
	}
	if c.storeHook != nil {
		c.storeHook(ch.ID)
	}
	return nil
}

// drop removes a chunk from the index, then its payloads.
func (c *Coordinator) drop(ch *dataset.Chunk) error {
	keys := c.cacheKeys(ch)
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
	for _, k := range keys {
		if err := c.cache.remove(k); err != nil {
			return err
		}
	}
	return nil
}
