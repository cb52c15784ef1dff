//go:build !unix

package tensor

func mapFile(path string) ([]byte, func() error, error) { return readAll(path) }

// ReleasePages does nothing where files are read rather than mapped.
func ReleasePages(b []byte) bool { return false }
