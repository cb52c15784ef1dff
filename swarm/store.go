package swarm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"carryon/internal/atomicfile"
	"carryon/protocol"

	"github.com/ipfs/go-cid"
)

// ErrNotFound is wrapped by Store.Get for a CID the store does not hold.
var ErrNotFound = errors.New("blob not found")

// ErrHashMismatch is wrapped by every error about data that does not hash to
// the CID or chunk hash that names it (a lying peer, a corrupted file).
var ErrHashMismatch = protocol.ErrHashMismatch

// Store holds content-addressed blobs (adaptor files). Implementations are
// safe for concurrent use.
type Store interface {
	// Put stores data under its CID (protocol.CIDOf) and returns the CID.
	// Storing the same data twice is not an error.
	Put(data []byte) (cid.Cid, error)
	// Get returns the blob named c, or an error wrapping ErrNotFound. The
	// caller must not modify the returned slice.
	Get(c cid.Cid) ([]byte, error)
	// Has reports whether the store holds c.
	Has(c cid.Cid) bool
}

// MemStore is a Store in memory.
type MemStore struct {
	mu    sync.RWMutex
	blobs map[cid.Cid][]byte
}

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore { return &MemStore{blobs: make(map[cid.Cid][]byte)} }

// Put copies data into the store.
func (s *MemStore) Put(data []byte) (cid.Cid, error) {
	if len(data) > protocol.MaxBlobBytes {
		return cid.Undef, fmt.Errorf("swarm.MemStore.Put: %d bytes, max %d", len(data), protocol.MaxBlobBytes)
	}
	c := protocol.CIDOf(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.blobs[c]; !ok {
		s.blobs[c] = append([]byte(nil), data...)
	}
	return c, nil
}

// Get returns the stored slice itself (no copy).
func (s *MemStore) Get(c cid.Cid) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.blobs[c]
	if !ok {
		return nil, fmt.Errorf("swarm.MemStore.Get %s: %w", c, ErrNotFound)
	}
	return b, nil
}

func (s *MemStore) Has(c cid.Cid) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.blobs[c]
	return ok
}

// DiskStore is a Store of one file per blob, named by its CID, in a
// directory. Writes are atomic (temporary file, fsync, rename, fsync of the
// directory), so a crash leaves either the whole blob or none; Get re-hashes
// what it reads, so a corrupted file is reported, never served.
type DiskStore struct {
	dir string
}

// NewDiskStore opens (creating if needed) a store in dir.
func NewDiskStore(dir string) (*DiskStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("swarm.NewDiskStore: %w", err)
	}
	return &DiskStore{dir: dir}, nil
}

func (s *DiskStore) path(c cid.Cid) string { return filepath.Join(s.dir, c.String()) }

func (s *DiskStore) Put(data []byte) (cid.Cid, error) {
	if len(data) > protocol.MaxBlobBytes {
		return cid.Undef, fmt.Errorf("swarm.DiskStore.Put: %d bytes, max %d", len(data), protocol.MaxBlobBytes)
	}
	c := protocol.CIDOf(data)
	if s.Has(c) {
		return c, nil
	}
	if err := atomicfile.Write(s.path(c), data, 0o644); err != nil {
		return cid.Undef, fmt.Errorf("swarm.DiskStore.Put: %w", err)
	}
	return c, nil
}

func (s *DiskStore) Get(c cid.Cid) ([]byte, error) {
	f, err := os.Open(s.path(c))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("swarm.DiskStore.Get %s: %w", c, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("swarm.DiskStore.Get: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("swarm.DiskStore.Get: %w", err)
	}
	if st.Size() > protocol.MaxBlobBytes {
		return nil, fmt.Errorf("swarm.DiskStore.Get %s: file is %d bytes, max %d", c, st.Size(), protocol.MaxBlobBytes)
	}
	data := make([]byte, st.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, fmt.Errorf("swarm.DiskStore.Get %s: %w", c, err)
	}
	if err := protocol.VerifyCID(c, data); err != nil {
		return nil, fmt.Errorf("swarm.DiskStore.Get: corrupted file %s: %w", s.path(c), err)
	}
	return data, nil
}

func (s *DiskStore) Has(c cid.Cid) bool {
	_, err := os.Stat(s.path(c))
	return err == nil
}
