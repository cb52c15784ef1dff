package coordinator

// The coordinator's durable state: one embedded bbolt file per coordinator.
//
// What a coordinator keeps in Config.CacheDir, so that a crash (kill -9 at
// any moment) loses nothing that was acknowledged:
//
//	state.db       the store (this file): jobs, the completion index of the
//	               embedding cache, per-node records (throughput, trust,
//	               bans), published adaptor versions and the checkpoints'
//	               index
//	checkpoints/   training checkpoint payloads, indexed in the store
//	ipfs/          a block store (swarm.Blocks), served over bitswap: every
//	               published adaptor (a pinned UnixFS file) and every
//	               cached chunk's embeddings (one UnixFS file per chunk and
//	               layer, Cache), which count only once this store indexes
//	               their CID
//
// Why bbolt (go.etcd.io/bbolt) and not pebble: the state is small (a record
// per chunk, node and version), written by one owner and read rarely; bbolt
// is a single file with ACID transactions (copy-on-write B+tree, a commit is
// durable when Update returns), pure Go, with exactly one writer at a time,
// which is the coordinator's design anyway (one goroutine owns the state),
// and no background compaction or write-ahead log to manage. pebble's
// LSM tree pays off for write-heavy key spaces far larger than memory,
// which this is not.
//
// Writes go through one goroutine (stateStore.run); reads use bbolt's
// read-only transactions, which see the last commit and never block the
// writer. Finished chunks are committed in groups (group commit): every
// lease goroutine that stored a chunk's frames in the block store (flatfs
// syncs them as it commits them) asks the writer to index them and waits;
// the writer gathers requests for at most Config.CommitDelay or
// Config.CommitBatch of them and indexes them all in one transaction (one
// fsync). Only then are the nodes' results acknowledged. (A request may
// still ask for a syncfs(2) of payload files written without fsync before
// its commit; the embedding cache no longer needs it.)
//
// An old cache directory (versions.jsonl, embeddings and checkpoints
// without a store) is migrated once, the first time a store is created in
// it: existing payload files are checked and indexed, and versions.jsonl is
// imported and renamed to versions.jsonl.imported.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	bolt "go.etcd.io/bbolt"

	"carryon/dataset"
	"carryon/tensor"
)

// Store file identity.
const (
	stateFormat  = "carryon-coordinator-state"
	stateVersion = 1
)

var (
	bMeta     = []byte("meta")
	bJobs     = []byte("jobs")
	bChunks   = []byte("chunks")   // cache key → chunkRecord
	bLeases   = []byte("leases")   // job/chunk → leaseRecord (in flight)
	bNodes    = []byte("nodes")    // peer ID → NodeRecord
	bVersions = []byte("versions") // u64 sequence → VersionRecord
	bVerByCID = []byte("versions-by-cid")
	bCkpts    = []byte("checkpoints") // runkey16/step(9 digits) → file name
)

// VersionRecord is one published adaptor version.
type VersionRecord struct {
	CID       string             `json:"cid"`
	Parent    string             `json:"parent,omitempty"`
	BaseHash  string             `json:"base_hash"`
	DataHash  string             `json:"data_hash"`
	Step      int                `json:"step"`
	Size      int                `json:"size"`
	Metrics   map[string]float64 `json:"metrics,omitempty"`
	UnixMilli int64              `json:"unix_ms"`
}

// NodeRecord is what the coordinator remembers of a node across jobs and
// restarts.
type NodeRecord struct {
	Clean        int     `json:"clean"`   // verified results since its last disagreement
	Suspect      bool    `json:"suspect"` // lost or could not settle a comparison
	Verified     int     `json:"verified"`
	Chunks       int     `json:"chunks"` // chunks of its stored, all jobs
	Failures     int     `json:"failures"`
	TokensPerSec float64 `json:"tps"`
	BannedJob    string  `json:"banned_job,omitempty"` // the job it is banned from
	BanReason    string  `json:"ban_reason,omitempty"`
	UnixMilli    int64   `json:"unix_ms"`
}

// chunkRecord marks one cached payload as complete and durable: the
// key → CID index of the embedding cache (Cache).
type chunkRecord struct {
	CID       string `json:"cid,omitempty"`   // the frame's UnixFS file in the block store ("" before carryon kept frames as content)
	Bytes     int64  `json:"bytes,omitempty"` // the frame's length
	Node      string `json:"node,omitempty"`  // whose result ("" = the coordinator's)
	Verified  bool   `json:"verified,omitempty"`
	UnixMilli int64  `json:"unix_ms"`
}

// leaseRecord is a lease in flight (written in the next group commit,
// cleared when its chunk is stored): after a crash they tell which nodes
// may hold finished results.
type leaseRecord struct {
	Node      string `json:"node"`
	UnixMilli int64  `json:"unix_ms"`
}

// JobRecord describes a Collect.
type JobRecord struct {
	ID        string `json:"id"`
	Base      string `json:"base"`
	Data      string `json:"data"`
	Codec     string `json:"codec"`
	Layers    []int  `json:"layers"`
	Total     int    `json:"total"`
	Finished  bool   `json:"finished"`
	UnixMilli int64  `json:"unix_ms"`
}

// storeReq is one write for the owner goroutine.
type storeReq struct {
	fn    func(tx *bolt.Tx) error
	group bool         // may wait for a group commit
	sync  bool         // payload files written without fsync must be made durable first
	reply chan<- error // nil: nobody waits
}

// stateStore owns the bbolt file; see the top of this file.
type stateStore struct {
	db      *bolt.DB
	path    string
	syncDir string // the payloads' file system (syncfs before a commit)
	batch   int
	delay   time.Duration
	reqs    chan storeReq
	done    chan struct{}
	closeMu sync.Mutex
	refs    int // coordinators sharing it (openStores)
	closed  bool
	commits int64 // transactions committed (owner goroutine; read after close)
	grouped int64 // group requests committed
	// baseLosses remembers, by baseLossKey, the base-alone loss of a split
	// of cached embeddings: every coordinator of this process on this
	// cache (a search's trials) measures it once. In memory only.
	baseLosses sync.Map
	// reads holds, by Key, the entries of the cache items that
	// coordinators with Config.ShareReads read (cachedEntries). In memory
	// only.
	reads sync.Map
}

// openStores shares one stateStore per path among the coordinators of
// one process (bbolt's file lock would otherwise make a second one wait);
// refs counts them.
var openStores = struct {
	sync.Mutex
	m map[string]*stateStore
}{m: map[string]*stateStore{}}

// openState opens (creating) the store at path, or shares the one this
// process has open there. A file that is not a readable carryon store, or
// is locked by another process, is an error and is left untouched.
func openState(path, syncDir string, batch int, delay time.Duration) (*stateStore, bool, error) {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	openStores.Lock()
	defer openStores.Unlock()
	if s := openStores.m[path]; s != nil {
		s.refs++
		return s, false, nil
	}
	s, fresh, err := openStateFile(path, syncDir, batch, delay)
	if err == nil {
		openStores.m[path] = s
	}
	return s, fresh, err
}

func openStateFile(path, syncDir string, batch int, delay time.Duration) (*stateStore, bool, error) {
	_, statErr := os.Stat(path)
	fresh := errors.Is(statErr, fs.ErrNotExist)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, false, fmt.Errorf("open coordinator state %s: %w", path, err)
	}
	if !fresh {
		if err := checkStateFile(path); err != nil {
			return nil, false, err
		}
	}
	db, err := openBolt(path)
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, false, fmt.Errorf("open coordinator state %s: in use by another coordinator process", path)
		}
		return nil, false, fmt.Errorf("open coordinator state %s: not a readable store (%v); it was left as it is: move it away to start afresh", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bMeta)
		if m == nil {
			empty := true
			tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			if !empty {
				return errors.New("a bbolt file of another program (no carryon meta bucket)")
			}
			var err error
			if m, err = tx.CreateBucket(bMeta); err != nil {
				return err
			}
			m.Put([]byte("format"), []byte(stateFormat))
			m.Put([]byte("version"), []byte(strconv.Itoa(stateVersion)))
			fresh = true
		}
		if f := string(m.Get([]byte("format"))); f != stateFormat {
			return fmt.Errorf("format %q, want %q", f, stateFormat)
		}
		if v := string(m.Get([]byte("version"))); v != strconv.Itoa(stateVersion) {
			return fmt.Errorf("version %s, this carryon reads version %d", v, stateVersion)
		}
		for _, b := range [][]byte{bJobs, bChunks, bLeases, bNodes, bVersions, bVerByCID, bCkpts} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, false, fmt.Errorf("open coordinator state %s: %v; it was left as it is", path, err)
	}
	s := &stateStore{db: db, path: path, syncDir: syncDir, batch: batch, delay: delay, refs: 1,
		reqs: make(chan storeReq, 4*batch), done: make(chan struct{})}
	go s.run()
	return s, fresh, nil
}

// checkStateFile rejects a file that is plainly not a bbolt file before
// bbolt sees it (bbolt would report a bare "invalid database").
func checkStateFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open coordinator state %s: %w", path, err)
	}
	defer f.Close()
	hdr := make([]byte, 32)
	n, _ := f.Read(hdr)
	if n == 0 {
		return nil // empty: bbolt initialises it
	}
	// bbolt's meta page: page header (16 bytes), then magic 0xED0CDAED.
	if n < 20 || binary.LittleEndian.Uint32(hdr[16:20]) != 0xED0CDAED {
		return fmt.Errorf("open coordinator state %s: not a bbolt store (bad magic); it was left as it is: move it away to start afresh", path)
	}
	return nil
}

// close drains pending writes and closes the file when the last
// coordinator sharing it closes it.
func (s *stateStore) close() error {
	openStores.Lock()
	s.refs--
	last := s.refs == 0
	if last && openStores.m[s.path] == s {
		delete(openStores.m, s.path)
	}
	openStores.Unlock()
	if !last {
		return nil
	}
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	close(s.reqs)
	s.closeMu.Unlock()
	<-s.done
	return s.db.Close()
}

// write runs fn in its own transaction (after any pending group) and
// waits for it to be durable.
func (s *stateStore) write(fn func(tx *bolt.Tx) error) error {
	return s.submit(storeReq{fn: fn}, true)
}

// groupWrite adds fn to the next group commit and waits until it is
// durable; sync asks that payload files be synced first.
func (s *stateStore) groupWrite(fn func(tx *bolt.Tx) error, sync bool) error {
	return s.submit(storeReq{fn: fn, group: true, sync: sync}, true)
}

// later adds fn to the next group commit without waiting.
func (s *stateStore) later(fn func(tx *bolt.Tx) error) {
	s.submit(storeReq{fn: fn, group: true}, false)
}

var errStoreClosed = errors.New("coordinator state store is closed")

func (s *stateStore) submit(r storeReq, wait bool) error {
	var reply chan error
	if wait {
		reply = make(chan error, 1)
		r.reply = reply
	}
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return errStoreClosed
	}
	s.reqs <- r
	s.closeMu.Unlock()
	if !wait {
		return nil
	}
	return <-reply
}

// run is the owner goroutine: it gathers group writes for at most delay
// or batch requests and commits them in one transaction.
func (s *stateStore) run() {
	defer close(s.done)
	var group []storeReq
	var timer *time.Timer
	var timeout <-chan time.Time
	flush := func() {
		if len(group) == 0 {
			return
		}
		s.commit(group)
		group = group[:0]
		if timer != nil {
			timer.Stop()
		}
		timeout = nil
	}
	for {
		select {
		case r, ok := <-s.reqs:
			if !ok {
				flush()
				return
			}
			if !r.group {
				flush()
				s.commit([]storeReq{r})
				continue
			}
			group = append(group, r)
			if len(group) >= s.batch {
				flush()
			} else if timeout == nil {
				timer = time.NewTimer(s.delay)
				timeout = timer.C
			}
		case <-timeout:
			timeout = nil
			flush()
		}
	}
}

func (s *stateStore) commit(rs []storeReq) {
	var err error
	for _, r := range rs {
		if r.sync {
			err = syncPayloads(s.syncDir)
			break
		}
	}
	if err == nil {
		err = s.db.Update(func(tx *bolt.Tx) error {
			for _, r := range rs {
				if err := r.fn(tx); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		err = fmt.Errorf("coordinator state: commit: %w", err)
	}
	s.commits++
	s.grouped += int64(len(rs))
	for _, r := range rs {
		if r.reply != nil {
			r.reply <- err
		}
	}
}

func (s *stateStore) view(fn func(tx *bolt.Tx) error) error { return s.db.View(fn) }

// putChunkRecords indexes a chunk's cached frames: recs[i] under keys[i]
// (one key per cached layer) in bChunks.
func putChunkRecords(tx *bolt.Tx, keys []Key, recs []chunkRecord) error {
	b := tx.Bucket(bChunks)
	for i, k := range keys {
		if err := putJSON(b, keyBytes(k), recs[i]); err != nil {
			return err
		}
	}
	return nil
}

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}

func keyBytes(k Key) []byte {
	return []byte(k.Base + "/" + k.Codec + "/" + strconv.Itoa(k.Layer) + "/" + k.Chunk)
}

// parseKey inverts keyBytes.
func parseKey(b []byte) (Key, error) {
	parts := strings.Split(string(b), "/")
	if len(parts) != 4 {
		return Key{}, fmt.Errorf("cache key %q: want base/codec/layer/chunk", b)
	}
	layer, err := strconv.Atoi(parts[2])
	if err != nil {
		return Key{}, fmt.Errorf("cache key %q: layer: %w", b, err)
	}
	return Key{Base: parts[0], Codec: parts[1], Layer: layer, Chunk: parts[3]}, nil
}

// hasChunks reports whether every key is indexed as complete.
func (s *stateStore) hasChunks(keys []Key) bool {
	ok := true
	s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bChunks)
		for _, k := range keys {
			if b.Get(keyBytes(k)) == nil {
				ok = false
				return nil
			}
		}
		return nil
	})
	return ok
}

// nodeRecord reads a node's record (zero when unknown).
func (s *stateStore) nodeRecord(id string) (NodeRecord, bool) {
	var r NodeRecord
	found := false
	s.view(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bNodes).Get([]byte(id)); v != nil {
			found = json.Unmarshal(v, &r) == nil
		}
		return nil
	})
	return r, found
}

// NodeRecords returns every node's persisted record, by peer ID.
func (c *Coordinator) NodeRecords() (map[string]NodeRecord, error) {
	out := map[string]NodeRecord{}
	err := c.state.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bNodes).ForEach(func(k, v []byte) error {
			var r NodeRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("node %s: %w", k, err)
			}
			out[string(k)] = r
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator.NodeRecords: %w", err)
	}
	return out, nil
}

// recordVersion appends rec unless a record with its CID is there.
func (c *Coordinator) recordVersion(rec VersionRecord) error {
	if _, err := cid.Decode(rec.CID); err != nil {
		return fmt.Errorf("record version: cid %q: %w", rec.CID, err)
	}
	return c.state.write(func(tx *bolt.Tx) error { return putVersion(tx, rec) })
}

func putVersion(tx *bolt.Tx, rec VersionRecord) error {
	by := tx.Bucket(bVerByCID)
	if by.Get([]byte(rec.CID)) != nil {
		return nil
	}
	b := tx.Bucket(bVersions)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	k := binary.BigEndian.AppendUint64(nil, seq)
	if err := putJSON(b, k, rec); err != nil {
		return err
	}
	return by.Put([]byte(rec.CID), k)
}

func (c *Coordinator) versionRecords() ([]VersionRecord, error) {
	var recs []VersionRecord
	err := c.state.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bVersions).ForEach(func(k, v []byte) error {
			var r VersionRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("version %x: %w", k, err)
			}
			recs = append(recs, r)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator: versions: %w", err)
	}
	return recs, nil
}

// Versions lists the adaptor versions this coordinator (in this cache
// directory) has published, oldest first, each with whether its adaptor
// is in the store (and so served to peers).
func (c *Coordinator) Versions() ([]VersionRecord, []bool, error) {
	recs, err := c.versionRecords()
	if err != nil {
		return nil, nil, err
	}
	stored := make([]bool, len(recs))
	for i, r := range recs {
		id, err := cid.Decode(r.CID)
		stored[i] = err == nil && c.store.Has(context.Background(), id)
	}
	return recs, stored, nil
}

// LatestVersion returns the newest published version, the parent of a
// next boosting stage; false when none was published.
func (c *Coordinator) LatestVersion() (VersionRecord, bool, error) {
	recs, err := c.versionRecords()
	if err != nil || len(recs) == 0 {
		return VersionRecord{}, false, err
	}
	return recs[len(recs)-1], true, nil
}

// CacheStatus counts the distinct chunks of ds and how many of them are
// already in the cache (and so will not be leased again).
func (c *Coordinator) CacheStatus(ds *dataset.Set) (cached, total int) {
	seen := map[string]bool{}
	for _, ch := range ds.All() {
		if seen[ch.ID] {
			continue
		}
		seen[ch.ID] = true
		total++
		if c.cached(ch) {
			cached++
		}
	}
	return cached, total
}

// migrate indexes an old cache directory's files in a new store: payload
// files that parse, checkpoints, and versions.jsonl (renamed afterwards).
func (c *Coordinator) migrate() error {
	var keys [][]byte
	root := legacyDir(c.cfg.CacheDir)
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".emb") {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		parts := strings.Split(filepath.ToSlash(rel), "/") // base16/codec/L<layer>/<chunk>.emb
		if len(parts) != 4 || !strings.HasPrefix(parts[2], "L") {
			return nil
		}
		layer, err := strconv.Atoi(parts[2][1:])
		codec, cerr := tensor.ParseCodec(parts[1])
		if err != nil || cerr != nil {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		if _, err := parseCacheFile(b, codec); err != nil {
			c.log.Warn("migration: cache file skipped", "file", p, "err", err)
			return nil
		}
		// The old layout names the base by 16 digits of its hash; index
		// only this coordinator's base, and only when it computes what
		// that layout held (exact products: EmbedHash is WeightsHash).
		if parts[0] != short(c.base.WeightsHash) || c.base.EmbedHash() != c.base.WeightsHash {
			return nil
		}
		k := Key{Base: c.base.WeightsHash, Codec: parts[1], Layer: layer, Chunk: strings.TrimSuffix(parts[3], ".emb")}
		keys = append(keys, keyBytes(k))
		return nil
	})
	var ckpts [][2]string
	filepath.WalkDir(filepath.Join(c.cfg.CacheDir, "checkpoints"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ckpt") {
			name := strings.TrimSuffix(filepath.Base(p), ".ckpt")
			if i := strings.LastIndexByte(name, '-'); i > 0 {
				if step, err := strconv.Atoi(name[i+1:]); err == nil {
					ckpts = append(ckpts, [2]string{ckptKey(name[:i], step), p})
				}
			}
		}
		return nil
	})
	var versions []VersionRecord
	vpath := filepath.Join(c.cfg.CacheDir, "versions.jsonl")
	if data, err := os.ReadFile(vpath); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			var r VersionRecord
			if err := json.Unmarshal(line, &r); err != nil {
				c.log.Warn("migration: versions.jsonl line skipped (torn?)", "line", n, "err", err)
				continue
			}
			versions = append(versions, r)
		}
	}
	if len(keys)+len(ckpts)+len(versions) == 0 {
		return nil
	}
	now := time.Now().UnixMilli()
	err := c.state.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bChunks)
		for _, k := range keys {
			if err := putJSON(b, k, chunkRecord{UnixMilli: now}); err != nil {
				return err
			}
		}
		for _, ck := range ckpts {
			if err := tx.Bucket(bCkpts).Put([]byte(ck[0]), []byte(ck[1])); err != nil {
				return err
			}
		}
		for _, v := range versions {
			if err := putVersion(tx, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrate %s: %w", c.cfg.CacheDir, err)
	}
	if len(versions) > 0 {
		if err := os.Rename(vpath, vpath+".imported"); err != nil {
			return fmt.Errorf("migrate %s: %w", c.cfg.CacheDir, err)
		}
	}
	c.log.Info("old cache directory migrated into the state store", "chunks", len(keys), "checkpoints", len(ckpts), "versions", len(versions))
	return nil
}

func ckptKey(run16 string, step int) string { return fmt.Sprintf("%s/%09d", run16, step) }

// openBolt is bolt.Open with its panics on damaged pages turned into
// errors: a damaged file must give a clear message, never a crash.
func openBolt(path string) (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("damaged pages: %v", r)
		}
	}()
	return bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
}
