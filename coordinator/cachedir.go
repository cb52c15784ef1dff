package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/ipfs/go-cid"
	bolt "go.etcd.io/bbolt"

	"carryon/swarm"
)

// CacheDir is a coordinator's cache directory opened without a base, for
// `carryon cache ls` and `carryon cache gc`: the state store's index of the
// embedding cache and the block store. A running coordinator holds the
// state store's lock, so these run while none runs there.
type CacheDir struct {
	dir   string
	state *stateStore
	store *swarm.Blocks
}

// OpenCacheDir opens the cache directory dir, which must hold a
// coordinator's state store.
func OpenCacheDir(dir string) (*CacheDir, error) {
	path := filepath.Join(dir, "state.db")
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open cache %s: no coordinator state there (%s is missing)", dir, path)
		}
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	d := Config{}.withDefaults()
	state, _, err := openState(path, dir, d.CommitBatch, d.CommitDelay)
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	store, err := swarm.OpenBlocks(StoreDir(dir))
	if err != nil {
		state.close()
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	return &CacheDir{dir: dir, state: state, store: store}, nil
}

// Close closes the stores.
func (d *CacheDir) Close() error {
	return errors.Join(d.store.Close(), d.state.close())
}

// CacheItem is one entry of the embedding cache's index.
type CacheItem struct {
	Key      Key
	CID      string    // the frame's UnixFS file ("" in an index of an older carryon not yet imported)
	Bytes    int64     // the frame's length
	Node     string    // the peer whose result it is ("" = computed by this coordinator)
	Verified bool      // compared with a second computation
	Time     time.Time // when it was indexed
	Stored   bool      // every block of the frame is in the block store
}

// List returns the index, oldest first.
func (d *CacheDir) List(ctx context.Context) ([]CacheItem, error) {
	var items []CacheItem
	err := d.state.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bChunks).ForEach(func(k, v []byte) error {
			key, err := parseKey(k)
			if err != nil {
				return err
			}
			var r chunkRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("index entry %s: %w", k, err)
			}
			items = append(items, CacheItem{Key: key, CID: r.CID, Bytes: r.Bytes, Node: r.Node, Verified: r.Verified,
				Time: time.UnixMilli(r.UnixMilli)})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("cache ls %s: %w", d.dir, err)
	}
	for i := range items {
		if id, err := cid.Decode(items[i].CID); err == nil {
			items[i].Stored = d.store.Has(ctx, id)
		}
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].Time.Before(items[j].Time) })
	return items, nil
}

// StoreUsage sums the block store: blocks and their bytes.
func (d *CacheDir) StoreUsage(ctx context.Context) (blocks int, bytes int64, err error) {
	all, err := d.store.List(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, b := range all {
		bytes += int64(b.Size)
	}
	return len(all), bytes, nil
}

// Pins lists the pinned roots of the block store (adaptors) with their
// labels.
func (d *CacheDir) Pins() (map[cid.Cid]string, error) { return d.store.Pins() }

// GCReport says what a garbage collection removed, or (dry run) would
// remove.
type GCReport struct {
	// DryRun: nothing was removed; the report lists what would be.
	DryRun bool
	// Expired are the index entries removed for their age.
	Expired []CacheItem
	// Broken are the index entries removed because blocks of their frame
	// are missing from the store (their chunks are computed again).
	Broken []CacheItem
	// Blocks is the block store's collection: every block that no index
	// entry left and no pinned adaptor reaches was removed.
	Blocks swarm.GCResult
}

// GCOptions configures CacheDir.GC.
type GCOptions struct {
	// OlderThan also removes the index entries indexed longer ago than
	// this, with their blocks; 0 keeps every entry whose blocks are
	// stored.
	OlderThan time.Duration
	// DryRun removes nothing and reports what would be removed.
	DryRun bool
}

// GC removes the index entries older than opt.OlderThan (none when it is
// 0) and those whose blocks are gone, then every block of the store that
// no remaining index entry and no pinned root (adaptor) reaches: blocks of
// dropped chunks, of fetches or imports cut short, of expired entries.
// Nothing an index entry or a pin refers to is removed. With opt.DryRun it
// removes nothing and reports the same lists.
func (d *CacheDir) GC(ctx context.Context, opt GCOptions) (GCReport, error) {
	rep := GCReport{DryRun: opt.DryRun}
	if opt.OlderThan < 0 {
		return rep, fmt.Errorf("cache gc: --older-than %v is negative", opt.OlderThan)
	}
	items, err := d.List(ctx)
	if err != nil {
		return rep, err
	}
	cutoff := time.Now().Add(-opt.OlderThan)
	var keep []cid.Cid
	var drop []CacheItem
	for _, it := range items {
		switch {
		case it.CID == "":
			// An older carryon's file payload: the next coordinator
			// start imports it into the block store.
		case opt.OlderThan > 0 && it.Time.Before(cutoff):
			rep.Expired = append(rep.Expired, it)
			drop = append(drop, it)
		case !it.Stored:
			rep.Broken = append(rep.Broken, it)
			drop = append(drop, it)
		default:
			id, _ := cid.Decode(it.CID) // Stored implies a valid CID
			keep = append(keep, id)
		}
	}
	if opt.DryRun {
		if rep.Blocks, err = d.store.Garbage(ctx, keep); err != nil {
			return rep, fmt.Errorf("cache gc --dry-run %s: %w", d.dir, err)
		}
		return rep, nil
	}
	if len(drop) > 0 {
		err := d.state.write(func(tx *bolt.Tx) error {
			b := tx.Bucket(bChunks)
			for _, it := range drop {
				if err := b.Delete(keyBytes(it.Key)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return rep, fmt.Errorf("cache gc %s: %w", d.dir, err)
		}
	}
	if rep.Blocks, err = d.store.GC(ctx, keep); err != nil {
		return rep, fmt.Errorf("cache gc %s: %w", d.dir, err)
	}
	return rep, nil
}
