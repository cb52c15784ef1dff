package coordinator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"carryon/dataset"
	"carryon/internal/atomicfile"
	"carryon/protocol"
	"carryon/tensor"
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

// Put writes the entries of k atomically.
func (c *Cache) Put(k Key, entries []Entry) error {
	b := append([]byte(nil), cacheMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Rows))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Dim))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Data)))
		b = append(b, e.Data...)
	}
	p := c.path(k)
	if err := writeFileAtomic(p, b); err != nil {
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

// writeFileAtomic writes b to path (creating its directory) durably.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o644)
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}

// cached reports whether every layer of ch is in the cache.
func (c *Coordinator) cached(ch *dataset.Chunk) bool {
	for _, l := range c.cfg.Layers {
		if !c.cache.Has(c.key(l, ch)) {
			return false
		}
	}
	return true
}

func (c *Coordinator) key(layer int, ch *dataset.Chunk) Key {
	return Key{Base: c.base.WeightsHash, Codec: c.codec.String(), Layer: layer, Chunk: ch.ID}
}

// put writes a chunk's entries, indexed [layer][seq], to the cache.
func (c *Coordinator) put(ch *dataset.Chunk, entries [][]Entry) error {
	for i, layer := range c.cfg.Layers {
		if err := c.cache.Put(c.key(layer, ch), entries[i]); err != nil {
			return err
		}
	}
	if c.storeHook != nil {
		c.storeHook(ch.ID)
	}
	return nil
}

// drop removes a chunk's entries from the cache.
func (c *Coordinator) drop(ch *dataset.Chunk) error {
	for _, layer := range c.cfg.Layers {
		if err := c.cache.remove(c.key(layer, ch)); err != nil {
			return err
		}
	}
	return nil
}
