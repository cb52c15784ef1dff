package tensor

import "runtime"

// chunkMin is the fewest elements forChunks gives a goroutine: about 10 µs
// of an elementwise op, well above the cost of starting one.
const chunkMin = 1 << 15

// chunked reports whether forChunks would split n items of size elements
// over goroutines; callers test it first so that small inputs run without
// building a closure.
func chunked(n, size int) bool {
	return n*size >= 2*chunkMin && runtime.GOMAXPROCS(0) > 1
}

// forChunks runs f over the items [0, n), each size elements long, split
// into one run per goroutine (up to GOMAXPROCS, each of at least chunkMin
// elements and a multiple of 16 items except the last), and returns when
// all are done. Small work runs as f(0, n) on the caller's goroutine.
// Elementwise and row-wise ops give the same bits however they are split.
func forChunks(n, size int, f func(i0, i1 int)) {
	w := min(runtime.GOMAXPROCS(0), n*size/chunkMin)
	if w <= 1 {
		f(0, n)
		return
	}
	splitCols(n, roundUp((n+w-1)/w, 16), f)
}
