package coordinator

import (
	"bufio"
	"bytes"
	"carryon/dataset"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/ipfs/go-cid"
)

// What a coordinator keeps in Config.CacheDir, so that a crash (kill -9 at
// any moment) loses nothing that was finished:
//
//	embeddings/    the chunk cache (Cache): a chunk file exists only once
//	               complete, and Collect leases only chunks without one
//	checkpoints/   training checkpoints per job and run (checkpoint.go)
//	ipfs/          every published adaptor: a pinned UnixFS file in a block
//	               store (swarm.Blocks, flatfs), served over bitswap from
//	               the moment the coordinator starts
//	versions.jsonl the published versions, one VersionRecord per line,
//	               appended and synced (VersionLog)

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

// maxVersionLine caps one line of the versions log.
const maxVersionLine = 1 << 20

// VersionLog is an append-only JSONL file of VersionRecords. Each append
// is one write followed by fsync; a crash can leave at most a torn last
// line, which reading skips and the next append cuts off.
type VersionLog struct {
	path string
	mu   sync.Mutex
}

// OpenVersionLog opens the log at path (it is created on the first append).
func OpenVersionLog(path string) *VersionLog { return &VersionLog{path: path} }

// Records returns the log's records, oldest first. A last line without its
// newline (a torn append) is ignored; any other bad line is an error naming
// it.
func (l *VersionLog) Records() ([]VersionRecord, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	recs, _, err := l.read()
	return recs, err
}

// read parses the file and returns the records and the length of its valid
// prefix (everything up to the last complete line).
func (l *VersionLog) read() ([]VersionRecord, int64, error) {
	f, err := os.Open(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("coordinator.VersionLog: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	var recs []VersionRecord
	var valid int64
	for n := 1; ; n++ {
		line, err := readLine(r, maxVersionLine)
		if err == io.EOF {
			return recs, valid, nil
		}
		if errors.Is(err, io.ErrUnexpectedEOF) { // torn last line
			return recs, valid, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("coordinator.VersionLog: %s line %d: %w", l.path, n, err)
		}
		valid += int64(len(line))
		if b := bytes.TrimSpace(line); len(b) > 0 {
			var rec VersionRecord
			if err := json.Unmarshal(b, &rec); err != nil {
				return nil, 0, fmt.Errorf("coordinator.VersionLog: %s line %d: %w", l.path, n, err)
			}
			if _, err := cid.Decode(rec.CID); err != nil {
				return nil, 0, fmt.Errorf("coordinator.VersionLog: %s line %d: cid %q: %w", l.path, n, rec.CID, err)
			}
			recs = append(recs, rec)
		}
	}
}

// readLine returns the next line with its '\n'; io.ErrUnexpectedEOF when
// the input ends without one, io.EOF when nothing is left.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		part, err := r.ReadSlice('\n')
		line = append(line, part...)
		if len(line) > max {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && len(line) == 0:
			return nil, io.EOF
		case err == io.EOF:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// Append adds rec unless a record with its CID is already there (so a
// republished version is recorded once). It first cuts off a torn last
// line, then writes one line and syncs it.
func (l *VersionLog) Append(rec VersionRecord) error {
	if _, err := cid.Decode(rec.CID); err != nil {
		return fmt.Errorf("coordinator.VersionLog.Append: cid %q: %w", rec.CID, err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("coordinator.VersionLog.Append: %w", err)
	}
	b = append(b, '\n')
	if len(b) > maxVersionLine {
		return fmt.Errorf("coordinator.VersionLog.Append: record of %d bytes, over the cap of %d", len(b), maxVersionLine)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	recs, valid, err := l.read()
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.CID == rec.CID {
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return fmt.Errorf("coordinator.VersionLog.Append: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("coordinator.VersionLog.Append: %w", err)
	}
	err = f.Truncate(valid)
	if err == nil {
		_, err = f.WriteAt(b, valid)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && valid == 0 {
		err = syncDir(filepath.Dir(l.path)) // the file may be new
	}
	if err != nil {
		return fmt.Errorf("coordinator.VersionLog.Append: %w", err)
	}
	return nil
}

// versionLogs holds one VersionLog per path, so that coordinators of one
// process sharing a cache directory serialise their appends.
var versionLogs sync.Map // path → *VersionLog

// versionLog is the coordinator's log of published versions.
func (c *Coordinator) versionLog() *VersionLog {
	p := filepath.Join(c.cfg.CacheDir, "versions.jsonl")
	l, _ := versionLogs.LoadOrStore(p, OpenVersionLog(p))
	return l.(*VersionLog)
}

func (c *Coordinator) recordVersion(rec VersionRecord) error { return c.versionLog().Append(rec) }

// Versions lists the adaptor versions this coordinator (in this cache
// directory) has published, oldest first, each with whether its adaptor
// is in the store (and so served to peers).
func (c *Coordinator) Versions() ([]VersionRecord, []bool, error) {
	recs, err := c.versionLog().Records()
	if err != nil {
		return nil, nil, err
	}
	stored := make([]bool, len(recs))
	for i, r := range recs {
		id, _ := cid.Decode(r.CID) // checked when read
		stored[i] = c.store.Has(context.Background(), id)
	}
	return recs, stored, nil
}

// LatestVersion returns the newest published version, the parent of a
// next boosting stage; false when none was published.
func (c *Coordinator) LatestVersion() (VersionRecord, bool, error) {
	recs, err := c.versionLog().Records()
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
