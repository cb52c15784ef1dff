//go:build unix && !linux

package tensor

// adviseHugePages does nothing where MADV_HUGEPAGE does not exist.
func adviseHugePages([]byte) {}
