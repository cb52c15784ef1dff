package tensor

import (
	"fmt"
	"os"
	"sync"
	"unsafe"
)

// The memory-mapping code has one file per OS family: mmap_unix.go
// (x/sys/unix: mmap, madvise), mmap_windows.go (x/sys/windows: file
// mappings, VirtualAlloc) and mmap_other.go (reads files, heap memory).
// This file holds what they share: opening the file and falling back to
// reading it (mapFile), and the registry of live file mappings.

// mapFile maps path read-only through the OS's mapFD; the returned func
// unmaps it. An empty file gives nil data; where mapping fails it reads the
// file instead.
func mapFile(path string) ([]byte, func() error, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if st.Size() == 0 {
		return nil, func() error { return nil }, nil
	}
	data, unmap, err := mapFD(f, st.Size())
	if err != nil {
		return readAll(path)
	}
	return data, addMapping(data, unmap), nil
}

// openMapped maps path (mapFile), parses the mapping and hands the parsed
// file its release func (its Close unmaps); on a parse error it unmaps
// again. Its errors begin "read KIND", and name path (an open error
// already does).
func openMapped[T interface{ keep(closeOnce) }](kind, path string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	data, unmap, err := mapFile(path)
	if err != nil {
		return zero, fmt.Errorf("read %s: %w", kind, err)
	}
	v, err := parse(data)
	if err != nil {
		unmap()
		return zero, fmt.Errorf("read %s %s: %w", kind, path, err)
	}
	v.keep(closeOnce(unmap))
	return v, nil
}

// closeOnce is the release func of a file mapping (nil when there is
// none): close calls it the first time only.
type closeOnce func() error

func (c *closeOnce) close() error {
	if *c == nil {
		return nil
	}
	f := *c
	*c = nil
	return f()
}

// mappings are the live read-only file mappings made by mapFile, as
// [start, end) addresses, so that ReleasePages can tell a mapping from heap
// memory (dropping heap pages would zero live data).
var mappings struct {
	sync.Mutex
	spans [][2]uintptr
}

// addMapping records data as a live mapping and returns the func that
// forgets it and then calls unmap.
func addMapping(data []byte, unmap func() error) func() error {
	start := uintptr(unsafe.Pointer(&data[0]))
	span := [2]uintptr{start, start + uintptr(len(data))}
	mappings.Lock()
	mappings.spans = append(mappings.spans, span)
	mappings.Unlock()
	return func() error {
		mappings.Lock()
		for i, s := range mappings.spans {
			if s == span {
				mappings.spans = append(mappings.spans[:i], mappings.spans[i+1:]...)
				break
			}
		}
		mappings.Unlock()
		return unmap()
	}
}

// ReleasePages tells the kernel that the pages under b are not needed for
// now, if b lies in a file mapping of OpenSafetensors or OpenGGUF: they
// leave the process's resident set and are read back from the file (the
// page cache) when touched again, so b stays valid. It does nothing to any
// other memory and reports whether it released anything. Use it after
// copying weights into another layout (PackB) to keep resident memory at
// one copy of the weights. Where files are read rather than mapped it
// releases nothing.
func ReleasePages(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	lo := uintptr(unsafe.Pointer(&b[0]))
	hi := lo + uintptr(len(b))
	mappings.Lock()
	defer mappings.Unlock()
	for _, s := range mappings.spans {
		if lo < s[0] || hi > s[1] {
			continue
		}
		// Whole pages that b touches, within the mapping (which starts on
		// a page; a page shared with a neighbour is only re-read later).
		pg := uintptr(os.Getpagesize())
		head := lo & (pg - 1)
		hi = min((hi+pg-1)&^(pg-1), (s[1]+pg-1)&^(pg-1))
		start := unsafe.Add(unsafe.Pointer(&b[0]), -int(head))
		return releaseMapped(unsafe.Slice((*byte)(start), hi-(lo-head)))
	}
	return false
}
