//go:build !amd64 || purego

package tensor

// transposeRows has no assembly here: packStrided does all rows in Go.
func transposeRows(d, src []float32, off, ld, rows, w, n8 int) int { return 0 }
