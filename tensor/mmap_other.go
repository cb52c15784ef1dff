//go:build !unix

package tensor

func mapFile(path string) ([]byte, func() error, error) { return readAll(path) }
