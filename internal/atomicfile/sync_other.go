//go:build !windows

package atomicfile

func isUnsupportedSync(error) bool { return false }
