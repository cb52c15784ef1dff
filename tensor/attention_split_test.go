package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
)

// TestAttentionBackwardSchedules checks that the two-pass schedule of
// AttentionBackward (taken when GOMAXPROCS ≥ 2·nKV) gives bitwise the
// gradients of the fused per-KV-head schedule (GOMAXPROCS = 1), for every
// subset of requested gradients and block sizes that do not divide T.
// TestAttentionGrad (finite differences) covers the fused schedule's values.
func TestAttentionBackwardSchedules(t *testing.T) {
	defer func(q, k int) { attnBlockQ, attnBlockK = q, k }(attnBlockQ, attnBlockK)
	rng := rand.New(rand.NewPCG(21, 22))
	for _, s := range []struct{ T, nHead, nKV, hd, bq, bk int }{
		{150, 4, 2, 16, 64, 64}, {97, 6, 1, 8, 16, 32}, {70, 2, 2, 32, 32, 16},
	} {
		attnBlockQ, attnBlockK = s.bq, s.bk
		q := randSlice(rng, s.T*s.nHead*s.hd, 1)
		k := randSlice(rng, s.T*s.nKV*s.hd, 1)
		v := randSlice(rng, s.T*s.nKV*s.hd, 1)
		dout := randSlice(rng, s.T*s.nHead*s.hd, 1)
		out := make([]float32, len(q))
		lse := make([]float32, s.nHead*s.T)
		procs := 2 * s.nKV
		old := runtime.GOMAXPROCS(procs)
		scratch := make([]float32, AttentionScratch(s.T, s.hd))
		AttentionForward(out, lse, q, k, v, scratch, s.T, s.nHead, s.nKV, s.hd)
		run := func(p int, wq, wk, wv bool) (dq, dk, dv []float32) {
			runtime.GOMAXPROCS(p)
			mk := func(want bool, n int) []float32 {
				if !want {
					return nil
				}
				g := make([]float32, n)
				for i := range g {
					g[i] = 0.5 // accumulates onto existing values
				}
				return g
			}
			dq, dk, dv = mk(wq, len(q)), mk(wk, len(k)), mk(wv, len(v))
			AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scratch, s.T, s.nHead, s.nKV, s.hd)
			return
		}
		for _, want := range [][3]bool{{true, true, true}, {true, false, false}, {false, true, false}, {false, false, true}, {false, true, true}} {
			name := fmt.Sprintf("T=%d heads=%d/%d hd=%d blocks=%d,%d grads=%v", s.T, s.nHead, s.nKV, s.hd, s.bq, s.bk, want)
			fq, fk, fv := run(1, want[0], want[1], want[2])
			sq, sk, sv := run(procs, want[0], want[1], want[2])
			for _, c := range []struct {
				n    string
				a, b []float32
			}{{"dq", fq, sq}, {"dk", fk, sk}, {"dv", fv, sv}} {
				for i := range c.a {
					if math.Float32bits(c.a[i]) != math.Float32bits(c.b[i]) {
						t.Fatalf("%s: %s[%d] two-pass %v, fused %v", name, c.n, i, c.b[i], c.a[i])
					}
				}
			}
		}
		runtime.GOMAXPROCS(old)
	}
}
