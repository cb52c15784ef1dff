//go:build !unix

package tensor

func mapFile(path string) ([]byte, func() error, error) { return readAll(path) }

// ReleasePages does nothing where files are read rather than mapped.
func ReleasePages(b []byte) bool { return false }

// AllocFloats returns n zeroed float32s and a release func (here plain heap
// memory: the release does nothing).
func AllocFloats(n int) ([]float32, func() error) {
	return make([]float32, n), func() error { return nil }
}
