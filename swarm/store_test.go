package swarm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"carryon/protocol"
)

// testStore is the conformance suite every Store passes.
func testStore(t *testing.T, s Store) {
	data := bytes.Repeat([]byte("carry-on "), 1000)
	missing := protocol.CIDOf([]byte("never stored"))

	c, err := s.Put(data)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Equals(protocol.CIDOf(data)) {
		t.Fatalf("Put returned %s, want the CID of the data", c)
	}
	if !s.Has(c) || s.Has(missing) {
		t.Fatalf("Has: stored %v, missing %v", s.Has(c), s.Has(missing))
	}
	got, err := s.Get(c)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get = %d bytes, %v", len(got), err)
	}
	if _, err := s.Get(missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
	if c2, err := s.Put(data); err != nil || !c2.Equals(c) {
		t.Fatalf("second Put = %s, %v", c2, err)
	}
	// Put copies: changing the caller's slice does not change the blob.
	data[0] ^= 0xff
	if got, _ := s.Get(c); got[0] == data[0] {
		t.Fatal("store aliases the slice given to Put")
	}
	empty, err := s.Put(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(empty); err != nil || len(got) != 0 {
		t.Fatalf("empty blob: %q, %v", got, err)
	}
	// Concurrent puts and gets of distinct blobs.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := bytes.Repeat([]byte{byte(i)}, 1000+i)
			c, err := s.Put(b)
			if err != nil {
				t.Error(err)
				return
			}
			if got, err := s.Get(c); err != nil || !bytes.Equal(got, b) {
				t.Errorf("concurrent blob %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
}

func TestMemStore(t *testing.T) { testStore(t, NewMemStore()) }

func TestDiskStore(t *testing.T) {
	dir := t.TempDir()
	s, err := NewDiskStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	testStore(t, s)

	// A reopened store sees the same blobs.
	c, _ := s.Put([]byte("persistent"))
	s2, _ := NewDiskStore(dir)
	if got, err := s2.Get(c); err != nil || string(got) != "persistent" {
		t.Fatalf("reopened: %q, %v", got, err)
	}
	// No temporary files are left behind.
	tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*"))
	if len(tmps) != 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
	// A corrupted file is reported, never served.
	if err := os.WriteFile(filepath.Join(dir, c.String()), []byte("persistenT"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(c); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Get of a corrupted file: %v, want ErrHashMismatch", err)
	}
}
