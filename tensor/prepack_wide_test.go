package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"unsafe"
)

// The widening bf16 kernels (gemmKernels.bf16w: genF32H's AVX2 and AVX-512
// assembly, and microGoTileH in the emulated 8×12 set) read a B of bf16
// pairs and widen it as they go. Every test here wants the bits of the
// float32 path that widens B before packing it (GemmBF16 on a CPU without
// VDPBF16PS): the same products added in the same order.

// wideSets returns the kernel sets under test that have a widening kernel.
func wideSets(t *testing.T) []*gemmKernels {
	var sets []*gemmKernels
	for _, ks := range gemmTestSets() {
		if ks.bf16w != nil {
			sets = append(sets, ks)
		}
	}
	if len(sets) == 0 {
		t.Fatal("no kernel set with a widening bf16 kernel, not even the emulated one")
	}
	return sets
}

// randBF16 returns n bf16 values of normal deviates.
func randBF16(rng *rand.Rand, n int) []uint16 {
	h := make([]uint16, n)
	for i := range h {
		h[i] = F32ToBF16(float32(rng.NormFloat64()))
	}
	return h
}

// TestWideBF16Kernel checks each widening micro-kernel bit for bit against
// its set's float32 micro-kernel on the same panels widened: depths around
// the unroll of 2, alpha/beta (beta = 0 must not read C), C rows wider
// than the tile left alone.
func TestWideBF16Kernel(t *testing.T) {
	rng := rand.New(rand.NewPCG(51, 52))
	for _, ks := range wideSets(t) {
		kn, f := ks.bf16w, ks.f32
		if kn.mr != f.mr || kn.nr != f.nr || kn.kc != f.kc || kn.kstep != 2 || kn.aw != 2 {
			t.Fatalf("%s: widening kernel %+v does not match the float32 one", ks.name, *kn)
		}
		mr, nr := kn.mr, kn.nr
		for _, ku := range []int{1, 2, 3, 4, 5, 17, 128} {
			a := make([]float32, 2*ku*mr)
			for i := range a {
				a[i] = BF16ToF32(F32ToBF16(float32(rng.NormFloat64())))
			}
			ah := unsafe.Slice((*uint16)(unsafe.Pointer(&a[0])), 2*len(a))
			bh := randBF16(rng, 2*ku*nr)
			bw := make([]float32, 2*ku*nr) // (2·ku, nr)
			for q := 0; q < ku; q++ {
				for j := 0; j < nr; j++ {
					bw[2*q*nr+j] = BF16ToF32(bh[(q*nr+j)*2])
					bw[(2*q+1)*nr+j] = BF16ToF32(bh[(q*nr+j)*2+1])
				}
			}
			ldc := nr + 3
			c0 := gemmRandSlice(rng, mr*ldc)
			for _, ab := range [][2]float32{{1, 0}, {0.5, 1}, {-2, 0.25}} {
				want := append([]float32(nil), c0...)
				f.micro(2*ku, a, bw, want, ldc, ab[0], ab[1])
				got := append([]float32(nil), c0...)
				if ab[1] == 0 {
					for i := range got {
						got[i] = float32(math.NaN()) // not to be read
					}
					for i := 0; i < mr; i++ {
						copy(got[i*ldc+nr:(i+1)*ldc], c0[i*ldc+nr:(i+1)*ldc])
					}
				}
				kn.micro(ku, ah, bh, got, ldc, ab[0], ab[1])
				for i := range got {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%s ku=%d alpha=%v beta=%v: c[%d] = %v, the float32 kernel on the widened panel gives %v",
							ks.name, ku, ab[0], ab[1], i, got[i], want[i])
					}
				}
			}
		}
	}
}

// smallWide returns a copy of ks with small blocks (kc 40, two tiles of
// rows, three of columns) in its float32, wide and widening kernels alike,
// so that modest shapes cross every block edge.
func smallWide(ks *gemmKernels) *gemmKernels {
	small := *ks
	f, w := *ks.f32, *ks.wide
	f.kc, f.mc, f.nc = 40, 2*f.mr, 3*f.nr
	w.kc, w.mc, w.nc = f.kc, f.mc, f.nc
	small.f32, small.wide = &f, &w
	return small.withWideBF16(ks.bf16w.micro, ks.gemvBF16W)
}

// TestGemmPackedWide checks GemmPacked on a widening packing
// (PackBBF16Bits where the CPU has no VDPBF16PS) for every set with a
// widening kernel, as packed and with small blocks: with alpha = 1, beta =
// 0 it must give GemmBF16's bits on the same set for m > 8, and for m ≤ 8
// (the small-m kernels, gemvBF16W) the bits of the one-thread blocked
// kernel on the same packing; for any alpha and beta, the float64
// reference bound of the rounded operands. Odd k, k past kc, partial
// panels, row strides past the width, 1..3 threads, m = 1..8 on panels
// enough for every run of segments.
func TestGemmPackedWide(t *testing.T) {
	rng := rand.New(rand.NewPCG(53, 54))
	shapes := []struct{ m, n, k int }{
		{3, 17, 5}, {8, 40, 300}, {9, 33, 257}, {13, 16, 16},
		{37, 70, 513}, {64, 130, 40}, {100, 50, 1}, {25, 64, 767}, {200, 97, 96},
	}
	for m := 1; m <= packedSmallMMax; m++ {
		shapes = append(shapes, struct{ m, n, k int }{m, 300, 93}, struct{ m, n, k int }{m, 45, 2})
	}
	for _, base := range wideSets(t) {
		for _, ks := range []*gemmKernels{base, smallWide(base)} {
			for _, s := range shapes {
				ldh, lda, ldc := s.k+3, s.k+1, s.n+2
				h := randBF16(rng, (s.n-1)*ldh+s.k)
				hf := make([]float32, len(h))
				for i, v := range h {
					hf[i] = BF16ToF32(v)
				}
				a := gemmRandSlice(rng, (s.m-1)*lda+s.k)
				pb := packBBF16BitsWith(ks, nil, s.n, s.k, h, ldh)
				if !pb.BF16() || pb.N() != s.n || pb.K() != s.k || pb.nr != ks.f32.nr {
					t.Fatalf("%s: PackedB bf16=%v n=%d k=%d nr=%d", ks.name, pb.BF16(), pb.N(), pb.K(), pb.nr)
				}
				got := make([]float32, len(hf))
				pb.Unpack(true, got, ldh)
				if want := unpadded(hf, s.n, s.k, ldh); !equalBits(unpadded(got, s.n, s.k, ldh), want) {
					t.Fatalf("%s %dx%d: Unpack does not give W back", ks.name, s.n, s.k)
				}
				c0 := gemmRandSlice(rng, (s.m-1)*ldc+s.n)
				for _, th := range []int{1, 2, 3} {
					old := runtime.GOMAXPROCS(th)
					sub := fmt.Sprintf("%s kc=%d %dx%dx%d threads=%d", ks.name, ks.f32.kc, s.m, s.n, s.k, th)
					want := append([]float32(nil), c0...)
					if s.m > packedSmallMMax {
						ks.gemmBF16(s.m, s.n, s.k, a, lda, h, ldh, want, ldc)
					} else {
						g := gemmJob{m: s.m, n: s.n, k: s.k, alpha: 1, a: a, lda: lda, c: want, ldc: ldc, packed: pb}
						blockedRect(&g, ks.bf16w, 0, s.m, 0, s.n)
					}
					for _, ab := range [][2]float32{{1, 0}, {0.5, 1}, {-2, 0.25}} {
						got := append([]float32(nil), c0...)
						GemmPacked(s.m, ab[0], a, lda, pb, ab[1], got, ldc)
						checkPackedRef(t, sub, s.m, s.n, s.k, ab[0], roundBF16(a), lda, hf, ldh, true, ab[1], c0, got, ldc)
						if ab == [2]float32{1, 0} && !equalBits(got, want) {
							t.Fatalf("%s: GemmPacked on the widening packing differs from GemmBF16 (m > 8) or its blocked kernel", sub)
						}
					}
					runtime.GOMAXPROCS(old)
				}
			}
		}
	}
}

// TestGemmSharedAWide runs the shared-A schedule with the widening kernel
// (A packed as float32 into its uint16 buffers, aw = 2) over 2..7 threads
// and chunks of A down to one tile: it must give the bits of the
// one-thread loop nest.
func TestGemmSharedAWide(t *testing.T) {
	rng := rand.New(rand.NewPCG(55, 56))
	for _, base := range wideSets(t) {
		ks := smallWide(base)
		for _, s := range [][3]int{{150, 170, 90}, {7, 33, 301}, {61, 500, 41}, {200, 65, 129}} {
			m, n, k := s[0], s[1], s[2]
			ldh, lda, ldc := k+5, k+3, n+2
			h := randBF16(rng, (n-1)*ldh+k)
			a := gemmRandSlice(rng, (m-1)*lda+k)
			c0 := gemmRandSlice(rng, (m-1)*ldc+n)
			pb := packBBF16BitsWith(ks, nil, n, k, h, ldh)
			job := func(c []float32) gemmJob {
				return gemmJob{m: m, n: n, k: k, alpha: 0.5, beta: -1.5, a: a, lda: lda, c: c, ldc: ldc, packed: pb}
			}
			want := append([]float32(nil), c0...)
			gw := job(want)
			blockedRect(&gw, ks.bf16w, 0, m, 0, n)
			for threads := 2; threads <= 7; threads++ {
				for _, maxElems := range []int{1, 3000, sharedAMaxElems} {
					got := append([]float32(nil), c0...)
					g := job(got)
					runSharedA(&g, ks.bf16w, threads, maxElems)
					if !equalBits(got, want) {
						t.Fatalf("%s %v, %d threads, chunk of %d: the shared-A schedule differs from one thread", ks.name, s, threads, maxElems)
					}
				}
			}
		}
	}
}

// unpadded returns the (n, k) rows of w (row stride ldw) without the gaps.
func unpadded(w []float32, n, k, ldw int) []float32 {
	out := make([]float32, 0, n*k)
	for j := 0; j < n; j++ {
		out = append(out, w[j*ldw:j*ldw+k]...)
	}
	return out
}

// equalBits reports whether a and b hold the same float32 bits.
func equalBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}
