//go:build amd64 && !purego

package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestKernBF16Model checks the VDPBF16PS micro-kernel against its Go model
// microGoPairs bit for bit: random bf16 blocks, depths around the unroll
// of 4, and scalings under which the store is exact or one rounding
// (alpha 1 or 2 with beta 0; alpha 1, beta 1: C + acc in one FMA).
func TestKernBF16Model(t *testing.T) {
	if !hasBF16 {
		t.Skip("this CPU has no AVX512_BF16")
	}
	rng := rand.New(rand.NewPCG(31, 32))
	for _, ku := range []int{1, 2, 3, 4, 5, 7, 8, 9, 128} {
		ap := make([]uint16, 12*ku*2)
		bp := make([]uint16, ku*32*2)
		for i := range ap {
			ap[i] = F32ToBF16(float32(rng.NormFloat64()))
		}
		for i := range bp {
			bp[i] = F32ToBF16(float32(rng.NormFloat64()))
		}
		const ldc = 35
		c0 := gemmRandSlice(rng, 11*ldc+32)
		for _, ab := range [][2]float32{{1, 0}, {2, 0}, {1, 1}} {
			got, want := append([]float32(nil), c0...), append([]float32(nil), c0...)
			microBF16(ku, ap, bp, got, ldc, ab[0], ab[1])
			microGoPairs(ku, ap, bp, want, ldc, ab[0], ab[1])
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("ku=%d alpha=%v beta=%v: c[%d] = %v, model %v", ku, ab[0], ab[1], i, got[i], want[i])
				}
			}
		}
	}
}

// TestRoundBF16Model checks roundBF16AVX512 against roundBF16Go bit for
// bit on random bit patterns (NaNs, infinities and denormals included) and
// on the rounding ties.
func TestRoundBF16Model(t *testing.T) {
	if !hasBF16 {
		t.Skip("this CPU has no AVX512_BF16")
	}
	rng := rand.New(rand.NewPCG(33, 34))
	x := make([]float32, 4096)
	for i := range x {
		switch i % 4 {
		case 0:
			x[i] = math.Float32frombits(rng.Uint32())
		case 1: // a tie or next to one, either parity
			x[i] = math.Float32frombits(rng.Uint32()&0xffff0000 | 0x8000 + uint32(rng.IntN(3)) - 1)
		case 2: // denormal
			x[i] = math.Float32frombits(rng.Uint32() & 0x807fffff)
		default:
			x[i] = float32(rng.NormFloat64())
		}
	}
	x[0], x[1], x[2] = float32(math.Inf(1)), float32(math.NaN()), float32(math.Copysign(0, -1))
	got, want := make([]uint16, len(x)), make([]uint16, len(x))
	roundBF16AVX512(len(x), &x[0], &got[0])
	for i, v := range x {
		want[i] = roundBF16Go(v)
	}
	for i := range x {
		if got[i] != want[i] {
			t.Fatalf("x[%d] = %#08x: got %#04x, model %#04x", i, math.Float32bits(x[i]), got[i], want[i])
		}
	}
}
