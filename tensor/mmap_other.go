//go:build !unix && !windows

package tensor

func mapFile(path string) ([]byte, func() error, error) { return readAll(path) }

// releaseMapped is never reached: nothing is mapped here.
func releaseMapped(page []byte) bool { return false }

// AllocFloats returns n zeroed float32s and a release func (here plain heap
// memory: the release does nothing).
func AllocFloats(n int) ([]float32, func() error) {
	return make([]float32, n), func() error { return nil }
}
