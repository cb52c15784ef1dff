package tensor

import (
	"math"
	"unsafe"
)

// The activations of the native bf16 GEMM (VDPBF16PS): A is rounded to
// bf16 row by row (roundBF16Row, vectorized where the CPU has
// AVX512_BF16), then its pairs along k are interleaved into micro-panels
// the kernel reads as one stream.

// packABF16 converts op(A)[i0:i0+mc, p0:p0+kc] (A (m, k), lda) to bf16
// micro-panels (roundUp(mc, mr)/mr panels, kpad/2, mr, 2) with kpad = kc
// rounded up to even: panel ir holds, for each pair q along k, rows
// ir..ir+mr's pairs q side by side, as the bf16 micro-kernel reads them.
// Rows past mc and an odd last column are zero.
func packABF16(dst []uint16, g *gemmJob, mr, i0, mc, p0, kc int) {
	a, lda := g.a, g.lda
	kp := roundUp(kc, 2)
	var row32 [512]uint32 // one row's chunk, rounded: pairs of bf16
	row := (*[1024]uint16)(unsafe.Pointer(&row32))
	for r := 0; r < mc; r++ {
		panel := dst[r/mr*mr*kp : (r/mr+1)*mr*kp]
		src := a[(i0+r)*lda+p0 : (i0+r)*lda+p0+kc]
		for c0 := 0; c0 < kc; c0 += len(row) {
			n := min(len(row), kc-c0)
			roundBF16Row(row[:n], src[c0:c0+n])
			if n%2 == 1 {
				row[n] = 0
			}
			// pair q of this chunk goes to panel pair (c0/2+q)·mr + r%mr
			np := (n + 1) / 2
			d := unsafe.Slice((*uint32)(unsafe.Pointer(&panel[c0*mr+r%mr*2])), (np-1)*mr+1)
			for q, v := range row32[:np] {
				d[q*mr] = v
			}
		}
	}
	// rows past mc in the last panel
	if rem := mc % mr; rem != 0 {
		panel := dst[mc/mr*mr*kp : (mc/mr+1)*mr*kp]
		for q := 0; q < kp; q += 2 {
			clear(panel[q*mr+rem*2 : q*mr+mr*2])
		}
	}
}

// packAF32H packs op(A)[i0:i0+mc, p0:p0+kc] for a widening bf16 kernel
// (tileKernel.aw = 2): float32 panels (mc/mr, kpad, mr) with kpad = kc
// rounded up to even (an odd last step of k zero, the pair of the B
// packing's zero), in dst viewed as float32s, every value rounded to bf16
// as roundBF16F32Row rounds it: GemmBF16's numerics.
func packAF32H(dst []uint16, g *gemmJob, mr, i0, mc, p0, kc int) {
	kp := roundUp(kc, 2)
	np := (mc + mr - 1) / mr
	f := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(dst))), len(dst)/2)[:np*mr*kp]
	if kp == kc {
		packF32Panels(f, g.a, g.lda, g.transA, mr, i0, mc, p0, kc)
	} else {
		for q := 0; q < np; q++ {
			d := f[q*mr*kp : (q+1)*mr*kp]
			packF32Panels(d, g.a, g.lda, g.transA, mr, i0+q*mr, min(mr, mc-q*mr), p0, kc)
			clear(d[kc*mr:])
		}
	}
	roundBF16F32Row(f, f)
}

// roundBF16Go rounds f to bf16 as VCVTNE2PS2BF16 does (the model of
// roundBF16AVX512, bit for bit): nearest even, NaN quieted, and, unlike
// F32ToBF16, a denormal input to a zero of its sign.
func roundBF16Go(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7f800000 == 0 { // zero or denormal
		return uint16(b>>16) & 0x8000
	}
	return F32ToBF16(f)
}

// roundBF16RowGo is the portable roundBF16Row.
func roundBF16RowGo(dst []uint16, src []float32) {
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = roundBF16Go(v)
	}
}

// roundBF16F32Row sets dst[i] to src[i] rounded to bf16 as roundBF16Go
// does, widened back to float32 (exactly): the activations of GemmBF16's
// paths that multiply in float32 (decode, CPUs without AVX512_BF16), so
// that every path multiplies the same bf16 values.
func roundBF16F32Row(dst, src []float32) {
	dst = dst[:len(src)]
	n := roundBF16F32Vec(dst, src) // the AVX2 kernel's share (round_amd64.s)
	roundBF16F32RowGo(dst[n:], src[n:])
}

// roundBF16F32RowGo is roundBF16F32Row in Go: the reference of its vector
// kernel.
func roundBF16F32RowGo(dst, src []float32) {
	dst = dst[:len(src)]
	for i, v := range src {
		b := math.Float32bits(v)
		r := (b + 0x7fff + (b>>16)&1) &^ 0xffff // nearest even (Inf stays Inf)
		if b&0x7f800000 == 0 {                  // zero or denormal: a zero of its sign
			r = b & 0x80000000
		}
		if b&0x7fffffff > 0x7f800000 { // NaN: quiet, as F32ToBF16
			r = (b | 0x400000) &^ 0xffff
		}
		dst[i] = math.Float32frombits(r)
	}
}

// roundBF16F32Rows rounds the rows of A (m, k), lda, into dst (m, k) with
// roundBF16F32Row, split over threads goroutines when it is large.
func roundBF16F32Rows(dst []float32, m, k int, a []float32, lda, threads int) {
	if int64(m)*int64(k) < 1<<16 {
		threads = 1
	}
	per := max(1, (m+4*threads-1)/(4*threads))
	splitChunks(m, per, min(threads, m), func(i0, i1 int) {
		for i := i0; i < i1; i++ {
			roundBF16F32Row(dst[i*k:(i+1)*k], a[i*lda:i*lda+k])
		}
	})
}
