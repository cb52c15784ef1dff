// Package cuda is the GPU twin of tensor's kernels, through gorgonia.org/cu.
//
// Everything that touches the CUDA driver lives behind the `cuda` build tag:
// gorgonia.org/cu's package init exits the process on a machine without a
// GPU, so no file without the tag may import it and no plain binary links
// it. A plain build gets a stub whose New returns ErrNotBuilt ("built
// without CUDA support").
//
// Thread rule: cu binds a context to a locked OS thread. A Device starts one
// goroutine that locks its thread and owns the context; every public method
// sends a closure to that goroutine and waits for its result. All methods are
// therefore safe for concurrent use; they serialise on the device goroutine.
// Panics and sticky errors of cu are turned into returned errors at this
// boundary.
package cuda

import "errors"

// ErrNotBuilt is returned by New in a binary built without the cuda tag.
var ErrNotBuilt = errors.New("cuda: built without CUDA support (rebuild with -tags cuda on a machine with the CUDA driver)")

// ErrNoDevice is returned by New when the driver reports no GPU.
var ErrNoDevice = errors.New("cuda: no CUDA device found")

// Info describes a device for adverts and logs.
type Info struct {
	Name        string // e.g. "NVIDIA H100 80GB HBM3"
	MemoryBytes int64  // total device memory
	Ordinal     int
}
