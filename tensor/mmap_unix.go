//go:build unix

package tensor

import (
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// mappings are the live read-only file mappings made by mapFile, as
// [start, end) addresses, so that ReleasePages can tell a mapping from heap
// memory (dropping heap pages would zero live data).
var mappings struct {
	sync.Mutex
	spans [][2]uintptr
}

// mapFile maps path read-only; the returned func unmaps it. Where mmap
// fails it reads the file instead.
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
	data, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return readAll(path)
	}
	start := uintptr(unsafe.Pointer(&data[0]))
	span := [2]uintptr{start, start + uintptr(len(data))}
	mappings.Lock()
	mappings.spans = append(mappings.spans, span)
	mappings.Unlock()
	return data, func() error {
		mappings.Lock()
		for i, s := range mappings.spans {
			if s == span {
				mappings.spans = append(mappings.spans[:i], mappings.spans[i+1:]...)
				break
			}
		}
		mappings.Unlock()
		return syscall.Munmap(data)
	}, nil
}

// ReleasePages tells the kernel that the pages under b are not needed for
// now, if b lies in a file mapping of OpenSafetensors or OpenGGUF: they
// leave the process's resident set and are read back from the file (the
// page cache) when touched again, so b stays valid. It does nothing to any
// other memory and reports whether it released anything. Use it after
// copying weights into another layout (PackB) to keep resident memory at
// one copy of the weights.
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
		page := unsafe.Slice((*byte)(start), hi-(lo-head))
		return syscall.Madvise(page, syscall.MADV_DONTNEED) == nil
	}
	return false
}

// AllocFloats returns n zeroed float32s outside the garbage-collected heap
// (an anonymous mapping), and the func that releases them; nothing may use
// the slice after that. Long-lived bulk data such as packed weights kept
// there does not count toward the collector's heap goal, so garbage is
// collected as often as without it (with GOGC=100, a 1.4 GB live heap would
// let 1.4 GB of garbage pile up). Where mmap fails it falls back to make.
func AllocFloats(n int) ([]float32, func() error) {
	if n <= 0 {
		return nil, func() error { return nil }
	}
	mem, err := syscall.Mmap(-1, 0, 4*n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]float32, n), func() error { return nil }
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&mem[0])), n), func() error { return syscall.Munmap(mem) }
}
