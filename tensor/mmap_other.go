//go:build !unix && !windows

package tensor

import (
	"errors"
	"os"
)

// mapFD maps nothing here: mapFile reads the file instead.
func mapFD(f *os.File, size int64) ([]byte, func() error, error) {
	return nil, nil, errors.New("no file mapping on this OS")
}

// releaseMapped is never reached: nothing is mapped here.
func releaseMapped(page []byte) bool { return false }

// AllocFloats returns n zeroed float32s and a release func (here plain heap
// memory: the release does nothing).
func AllocFloats(n int) ([]float32, func() error) {
	return make([]float32, n), func() error { return nil }
}
