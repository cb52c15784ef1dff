package tensor

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
)

// TestForChunksOps checks that the ops split by forChunks (SwiGLUForward,
// AddInPlace, RMSNormForward) give on several goroutines the bits of one
// pass over the whole input, on sizes that split unevenly, and that every
// item is visited once.
func TestForChunksOps(t *testing.T) {
	old := runtime.GOMAXPROCS(3)
	defer runtime.GOMAXPROCS(old)
	rng := rand.New(rand.NewPCG(41, 42))
	for _, n := range []int{5, chunkMin + 3, 3*chunkMin + 21} {
		seen := make([]int, n)
		forChunks(n, 1, func(i0, i1 int) {
			for i := i0; i < i1; i++ {
				seen[i]++ // disjoint runs: no two goroutines share an i
			}
		})
		for i, c := range seen {
			if c != 1 {
				t.Fatalf("n=%d: item %d visited %d times", n, i, c)
			}
		}
		g, u, x := randSlice(rng, n, 3), randSlice(rng, n, 1), randSlice(rng, n, 1)
		got, want := make([]float32, n), make([]float32, n)
		SwiGLUForward(got, g, u)
		swiglu(want, g, u)
		if !slices.Equal(got, want) {
			t.Fatalf("n=%d: SwiGLUForward split differs from one pass", n)
		}
		copy(got, x)
		copy(want, x)
		AddInPlace(got, u)
		for i, v := range u {
			want[i] += v
		}
		if !slices.Equal(got, want) {
			t.Fatalf("n=%d: AddInPlace split differs from one pass", n)
		}
		const d = 96
		rows := n / d
		w := randSlice(rng, d, 1)
		rg, rw := make([]float32, rows), make([]float32, rows)
		RMSNormForward(got, rg, x, w, rows, d, 1e-6)
		rmsNormRows(want, rw, x, w, 0, rows, d, 1e-6)
		if !slices.Equal(got[:rows*d], want[:rows*d]) || !slices.Equal(rg, rw) {
			t.Fatalf("n=%d: RMSNormForward split differs from one pass", n)
		}
	}
}
