//go:build unix

package tensor

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapFD maps the size bytes of f read-only (mmap); the returned func
// unmaps them.
func mapFD(f *os.File, size int64) ([]byte, func() error, error) {
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return data, func() error { return unix.Munmap(data) }, nil
}

// releaseMapped drops the whole pages of a file mapping from the resident
// set (MADV_DONTNEED: on Linux they are re-read from the page cache when
// touched; on macOS and the BSDs it is a hint the kernel may act on later).
func releaseMapped(page []byte) bool {
	return unix.Madvise(page, unix.MADV_DONTNEED) == nil
}

// AllocFloats returns n zeroed float32s outside the garbage-collected heap
// (an anonymous mapping), and the func that releases them; nothing may use
// the slice after that. Long-lived bulk data such as packed weights kept
// there does not count toward the collector's heap goal, so garbage is
// collected as often as without it (with GOGC=100, a 1.4 GB live heap would
// let 1.4 GB of garbage pile up). Huge pages are asked for (adviseHugePages).
// Where mmap fails it falls back to make.
func AllocFloats(n int) ([]float32, func() error) {
	if n <= 0 {
		return nil, func() error { return nil }
	}
	mem, err := unix.Mmap(-1, 0, 4*n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return make([]float32, n), func() error { return nil }
	}
	adviseHugePages(mem)
	return unsafe.Slice((*float32)(unsafe.Pointer(&mem[0])), n), func() error { return unix.Munmap(mem) }
}
