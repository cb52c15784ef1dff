package tensor

import (
	"fmt"
	"runtime"
	"unsafe"
)

// PackedB is a GEMM right operand op(B): (k, n) stored once in the panel
// layout of the float32 micro-kernel that Gemm uses on this CPU, so that
// products with a fixed operand (a frozen weight) skip the per-call packing
// of Gemm, which transposes B and, split over threads, repeats it per thread.
//
// Layout: op(B) is cut into depth blocks of kc rows; block p holds the
// roundUp(n, nr) columns as nr-wide micro-panels of (kcur, nr), columns past
// n zero. A PackedB is immutable after PackB and safe for concurrent use;
// it does not alias the source slice.
type PackedB struct {
	n, k   int
	transB bool // packed from B (n, k): GemmPacked may take its small-m path
	nr, kc int
	npad   int          // roundUp(n, nr)
	kern   *gemmKernels // the implementation it was packed for
	data   []float32    // (blocks of kc) × (npad/nr panels) × (kcur, nr)
	// half, set instead of data by PackBBF16: bf16 pairs along k for the
	// native bf16 kernel, or, from PackBBF16Bits on a CPU without one, for
	// the widening kernel (gemmKernels.bf16w), (blocks of kc) × (npad/nr
	// panels) × (kpad/2, nr, 2) with kpad = kcur rounded up to even (the odd
	// last element zero).
	half []uint16
}

// N is the number of columns of op(B).
func (pb *PackedB) N() int { return pb.n }

// K is the number of rows (the reduction depth) of op(B).
func (pb *PackedB) K() int { return pb.k }

// Floats is the number of float32s the packed copy holds (0 for a bf16
// packing: see Bytes).
func (pb *PackedB) Floats() int { return len(pb.data) }

// Bytes is the size of the packed copy in bytes.
func (pb *PackedB) Bytes() int { return 4*len(pb.data) + 2*len(pb.half) }

// BF16 reports whether pb was packed by PackBBF16 (bf16 values).
func (pb *PackedB) BF16() bool { return pb.half != nil }

// PackB packs op(B) for GemmPacked: B is (k, n) with leading dimension ldb,
// or (n, k) when transB (the nn.Linear weight layout, W (out, in) gives
// op(B) = Wᵀ). The copy takes about k·n floats. The packing itself is split
// over GOMAXPROCS goroutines. It panics if ldb or len(b) do not fit.
func PackB(transB bool, n, k int, b []float32, ldb int) *PackedB {
	return packBWith(gemmBest, transB, n, k, b, ldb)
}

// PackedSize is how many float32s PackB's copy of an op(B) with n columns
// and depth k takes (what PackBInto needs).
func PackedSize(n, k int) int { return roundUp(max(n, 0), gemmBest.f32.nr) * max(k, 0) }

// PackBInto is PackB with the packed copy written into dst (at least
// PackedSize(n, k) floats; the PackedB aliases it), so that a caller can
// keep large packed weights in memory of its own (e.g. AllocFloats, outside
// the garbage-collected heap).
func PackBInto(dst []float32, transB bool, n, k int, b []float32, ldb int) *PackedB {
	if len(dst) < PackedSize(n, k) {
		panic(fmt.Sprintf("tensor.PackBInto: dst has %d floats, want PackedSize = %d", len(dst), PackedSize(n, k)))
	}
	return packBWithDst(gemmBest, dst[:PackedSize(n, k):PackedSize(n, k)], transB, n, k, b, ldb)
}

func packBWith(ks *gemmKernels, transB bool, n, k int, b []float32, ldb int) *PackedB {
	return packBWithDst(ks, nil, transB, n, k, b, ldb)
}

// packBWithDst packs into dst, or into a new slice when dst is nil.
func packBWithDst(ks *gemmKernels, dst []float32, transB bool, n, k int, b []float32, ldb int) *PackedB {
	if n < 0 || k < 0 {
		panic(fmt.Sprintf("tensor.PackB: negative dimension n=%d k=%d", n, k))
	}
	checkGemm("tensor.PackB", false, transB, 0, n, k, 0, max(1, k), len(b), ldb, 0, max(1, n))
	kn := ks.f32
	pb := &PackedB{n: n, k: k, transB: transB, nr: kn.nr, kc: kn.kc, npad: roundUp(n, kn.nr), kern: ks}
	if dst == nil {
		dst = make([]float32, pb.npad*k)
	}
	pb.data = dst
	if n == 0 || k == 0 {
		return pb
	}
	g := gemmJob{transB: transB, n: n, k: k, b: b, ldb: ldb}
	packPanelItems(pb, func(p0, kcur, j0, nc int) {
		base := p0*pb.npad + j0*kcur
		packBF32(pb.data[base:base+roundUp(nc, kn.nr)*kcur], &g, kn.nr, p0, kcur, j0, nc)
	})
	return pb
}

// packPanelItems splits the packing of pb's op(B) (k, n) into items of one
// depth block (pb.kc deep; kcur, the last one shallower) by one group of
// up to 16 panels (columns j0..j0+nc, nc ≤ 16·pb.nr), and runs pack on
// each, over GOMAXPROCS goroutines (one for a small B). Items write
// disjoint ranges of the packing, whatever its element type.
func packPanelItems(pb *PackedB, pack func(p0, kcur, j0, nc int)) {
	const panelsPerItem = 16
	n, k, nr, kc := pb.n, pb.k, pb.nr, pb.kc
	npanels := pb.npad / nr
	ngroups := (npanels + panelsPerItem - 1) / panelsPerItem
	nblocks := (k + kc - 1) / kc
	items := nblocks * ngroups
	w := min(runtime.GOMAXPROCS(0), items)
	if int64(n)*int64(k) < 1<<16 {
		w = 1
	}
	runItems(w, items, func(_, it int) {
		blk, grp := it/ngroups, it%ngroups
		p0 := blk * kc
		j0 := grp * panelsPerItem * nr
		if j0 >= n {
			return
		}
		pack(p0, min(kc, k-p0), j0, min(j0+panelsPerItem*nr, n)-j0)
	})
}

// NativeBF16 reports whether this CPU has a native bf16 GEMM kernel
// (AVX512_BF16's VDPBF16PS), the one PackBBF16 packs for.
func NativeBF16() bool { return gemmBest.bf16 != nil }

// PackBBF16 is PackB for the native bf16 micro-kernel: op(B) is rounded to
// bf16 (nearest even) and stored as pairs along k, in half the bytes of
// PackB's copy. GemmPacked with it rounds each row of A to bf16 as it packs
// it and adds the exact products of each pair in float32 (VDPBF16PS), for
// any m: the precision of GemmBF16's native path with, in addition, B
// rounded (relative error per product ≤ 2⁻⁸ + 2⁻⁸; the sum's error is
// typically ~2⁻⁸·√k·rms(a·b), see TestPackedBF16Tolerance). A B that holds
// bf16 values already (a bf16 checkpoint's weight) is stored exactly.
//
// It returns nil when the CPU has no native bf16 kernel (NativeBF16 is
// false): callers then use PackB, the exact float32 path.
func PackBBF16(transB bool, n, k int, b []float32, ldb int) *PackedB {
	return packBBF16With(gemmBest, transB, n, k, b, ldb)
}

func packBBF16With(ks *gemmKernels, transB bool, n, k int, b []float32, ldb int) *PackedB {
	if ks.bf16 == nil {
		return nil
	}
	if n < 0 || k < 0 {
		panic(fmt.Sprintf("tensor.PackBBF16: negative dimension n=%d k=%d", n, k))
	}
	checkGemm("tensor.PackBBF16", false, transB, 0, n, k, 0, max(1, k), len(b), ldb, 0, max(1, n))
	return packBF16Panels(ks, nil, &gemmJob{transB: transB, n: n, k: k, b: b, ldb: ldb}, packBRoundBF16)
}

// PacksBF16 reports whether PackBBF16Bits packs a bf16 weight on this
// CPU: for the native bf16 kernel (NativeBF16), or for the float32 kernel
// set's widening kernel (AVX2, AVX-512 F), which has GemmBF16's numerics
// (for m > 8, its bits on that CPU).
func PacksBF16() bool { return gemmBest.halfKernel() != nil }

// PackedBF16Floats is how many float32s of storage PackBBF16Bits's copy of
// a W (n, k) takes (what its dst needs), 0 where it does not pack
// (PacksBF16 is false).
func PackedBF16Floats(n, k int) int { return packedBF16Floats(gemmBest, n, k) }

func packedBF16Floats(ks *gemmKernels, n, k int) int {
	kn := ks.halfKernel()
	if kn == nil {
		return 0
	}
	return (roundUp(max(n, 0), kn.nr)*roundUp(max(k, 0), 2) + 1) / 2
}

// PackBBF16Bits is PackBBF16 for a W (n, k) (op(B) = Wᵀ, the nn.Linear
// layout) that holds bf16 values already, h with row stride ldh (a bf16
// checkpoint's weight, memory-mapped): they are stored exactly, with no
// float32 copy. The packing goes into dst when it is not nil (at least
// PackedBF16Floats(n, k) float32s of storage, e.g. from AllocFloats,
// viewed as bf16 pairs: the PackedB aliases it). It returns nil where it
// does not pack (PacksBF16 is false).
//
// Where the CPU has no native bf16 kernel, the packing is for the float32
// kernel set's widening kernel: for m > 8 GemmPacked then gives the bits
// GemmBF16 gives for the same operands (A rounded to bf16, exact float32
// products added k by k), and for m ≤ 8 the same sums from its small-m
// kernels (GemmBF16's own small-m path there adds in another order).
func PackBBF16Bits(dst []float32, n, k int, h []uint16, ldh int) *PackedB {
	return packBBF16BitsWith(gemmBest, dst, n, k, h, ldh)
}

func packBBF16BitsWith(ks *gemmKernels, dst []float32, n, k int, h []uint16, ldh int) *PackedB {
	if ks.halfKernel() == nil {
		return nil
	}
	if n < 0 || k < 0 {
		panic(fmt.Sprintf("tensor.PackBBF16Bits: negative dimension n=%d k=%d", n, k))
	}
	checkGemm("tensor.PackBBF16Bits", false, true, 0, n, k, 0, max(1, k), len(h), ldh, 0, max(1, n))
	var half []uint16
	if dst != nil {
		if want := packedBF16Floats(ks, n, k); len(dst) < want {
			panic(fmt.Sprintf("tensor.PackBBF16Bits: dst has %d floats, want PackedBF16Floats = %d", len(dst), want))
		}
		if len(dst) > 0 {
			half = unsafe.Slice((*uint16)(unsafe.Pointer(&dst[0])), 2*len(dst))
		}
	}
	return packBF16Panels(ks, half, &gemmJob{transB: true, n: n, k: k, bh: h, ldb: ldh}, packBBF16)
}

// packBF16Panels packs g's op(B) (k, n) into bf16 pair panels for
// ks.halfKernel() with pack (packBRoundBF16 from float32, packBBF16 from
// bf16), into dst or, when dst is nil, a new slice; split over GOMAXPROCS
// goroutines.
func packBF16Panels(ks *gemmKernels, dst []uint16, g *gemmJob, pack func(dst []uint16, g *gemmJob, nr, p0, kc, j0, nc int)) *PackedB {
	kn := ks.halfKernel()
	n, k := g.n, g.k
	pb := &PackedB{n: n, k: k, transB: g.transB, nr: kn.nr, kc: kn.kc, npad: roundUp(n, kn.nr), kern: ks}
	if dst == nil {
		dst = make([]uint16, pb.npad*roundUp(k, 2))
	}
	pb.half = dst[: pb.npad*roundUp(k, 2) : pb.npad*roundUp(k, 2)]
	if n == 0 || k == 0 {
		return pb
	}
	packPanelItems(pb, func(p0, kcur, j0, nc int) {
		kpad := roundUp(kcur, 2)
		base := p0*pb.npad + j0*kpad
		pack(pb.half[base:base+roundUp(nc, kn.nr)*kpad], g, kn.nr, p0, kcur, j0, nc)
	})
	return pb
}

// packBRoundBF16 packs a float32 op(B)[p0:p0+kc, j0:j0+nc] rounded to
// bf16 as (nc/nr panels, kc/2, nr, 2), zero-padding columns past nc and an
// odd last k: B is (k, n), or (n, k) when g.transB.
func packBRoundBF16(dst []uint16, g *gemmJob, nr, p0, kc, j0, nc int) {
	b, ldb := g.b, g.ldb
	kp := roundUp(kc, 2)
	for jr := 0; jr < nc; jr += nr {
		d := dst[jr*kp : (jr+nr)*kp]
		cols := min(nr, nc-jr)
		if g.transB { // column q of op(B) is row j0+jr+q of B
			for q := 0; q < nr; q++ {
				if q >= cols {
					for p := 0; p < kp; p++ {
						d[(p>>1)*2*nr+2*q+p&1] = 0
					}
					continue
				}
				src := b[(j0+jr+q)*ldb+p0:]
				src = src[:kc]
				for p, v := range src {
					d[(p>>1)*2*nr+2*q+p&1] = F32ToBF16(v)
				}
				if kc&1 == 1 {
					d[(kc>>1)*2*nr+2*q+1] = 0
				}
			}
			continue
		}
		// B (k, n): rows p and p+1 give the pairs of nr columns
		for p := 0; p < kp; p += 2 {
			dp := d[(p>>1)*2*nr : (p>>1)*2*nr+2*nr]
			r0 := b[(p0+p)*ldb+j0+jr:]
			r0 = r0[:cols]
			var r1 []float32
			if p+1 < kc {
				r1 = b[(p0+p+1)*ldb+j0+jr:]
				r1 = r1[:cols]
			}
			for q, v := range r0 {
				dp[2*q] = F32ToBF16(v)
				if r1 != nil {
					dp[2*q+1] = F32ToBF16(r1[q])
				} else {
					dp[2*q+1] = 0
				}
			}
			clear(dp[2*cols:])
		}
	}
}

// GemmPacked computes C = alpha·op(A)·op(B) + beta·C with op(B) prepacked
// by PackB (or PackBBF16: then with the bf16 kernels, see there):
//
//	A:  (m, k) with leading dimension lda
//	pb: op(B) (k, n)
//	C:  (m, n) with leading dimension ldc
//
// The result is bitwise the one Gemm gives for the same operands whenever
// Gemm takes its blocked path (m > 8 or B not transposed): the same
// micro-kernel adds the same products in the same order. For m ≤ 8 and a
// B packed with transB (decode times an nn.Linear weight), where Gemm
// takes its dot-product path, each micro-panel is instead streamed once
// per four rows of A by a small-m kernel, several distant panels side by
// side; that result has Gemm's error bound but not its rounding. A bf16
// packing takes that small-m path for m ≤ 8 whatever its layout (the same
// bf16 products and sums per lane as its blocked kernel: with alpha = 1
// and beta = 0, the same bits; for a widening packing, PackBBF16Bits on a
// CPU without a native bf16 kernel, those are GemmBF16's bits when m > 8).
// With beta == 0, C is overwritten. It panics if the shapes do not fit.
func GemmPacked(m int, alpha float32, a []float32, lda int, pb *PackedB, beta float32, c []float32, ldc int) {
	n, k := pb.n, pb.k
	checkGemm("tensor.GemmPacked", false, false, m, n, k, len(a), lda, k*n, max(1, n), len(c), ldc)
	if emptyGemm(m, n, k, alpha, beta, c, ldc) {
		return
	}
	g := gemmJob{m: m, n: n, k: k, alpha: alpha, beta: beta, a: a, lda: lda, c: c, ldc: ldc, packed: pb}
	if m <= packedSmallMMax && (pb.transB || pb.half != nil) {
		runSmallMPacked(&g, pb.kern, runtime.GOMAXPROCS(0))
		return
	}
	if pb.half != nil {
		runBlocked(&g, pb.kern.halfKernel(), runtime.GOMAXPROCS(0))
		return
	}
	runBlocked(&g, pb.kern.f32, runtime.GOMAXPROCS(0))
}

// packedSmallMMax is the largest m that GemmPacked (B packed with transB,
// or in bf16) runs with the gemv kernels (each micro-panel of B streamed
// once per four rows of A) instead of the blocked path.
const packedSmallMMax = 8

// runSmallMPacked computes C = alpha·A·op(B) + beta·C for m ≤
// packedSmallMMax with op(B) prepacked: the micro-panels (columns of C) are
// cut into about four runs per thread (multiples of four panels, for the
// kernels' segments), handed out as threads come free (runItems), so that
// a thread the OS deschedules does not hold the others at the end; each
// panel is streamed through its depth blocks once per four rows of A (from
// memory once: the later rows find it in cache), accumulating in a pooled
// (4, nr) tile. For a bf16 packing, A is first rounded to bf16 rows (once,
// for all threads), as packABF16 rounds it for the blocked kernel.
func runSmallMPacked(g *gemmJob, ks *gemmKernels, threads int) {
	pb := g.packed
	npanels := pb.npad / pb.nr
	work := 2 * float64(g.m) * float64(g.n) * float64(g.k)
	threads = min(threads, max(1, int(work/(1<<22))), npanels)
	per := npanels
	if threads > 1 {
		per = roundUp((npanels+4*threads-1)/(4*threads), 4)
	}
	nr := pb.nr
	// gemv runs rows of A from i0 on ns segments of depth block pc
	// (kcur deep): panels q, q+run, … into out[s·os:].
	gemv := func(i0, rows, ns, pc, kcur, q, run int, out []float32, os int, add bool) {
		bsz := nr * kcur // floats per panel of this block
		blk := pb.data[pc*pb.npad : pc*pb.npad+pb.npad*kcur]
		ks.gemvN(rows, ns, kcur, g.a[i0*g.lda+pc:], g.lda, blk[q*bsz:], nr, run*bsz, out, os, add)
	}
	if pb.half != nil {
		buf := getBuf[uint16]()
		defer putBuf(buf)
		ah, lda := roundRowsBF16(buf, g)
		gemvH := ks.gemvBF16
		if ks.bf16 == nil { // a widening packing
			gemvH = ks.gemvBF16W
		}
		gemv = func(i0, rows, ns, pc, kcur, q, run int, out []float32, os int, add bool) {
			kpad := roundUp(kcur, 2)
			bsz := nr * kpad // bf16s per panel of this block
			blk := pb.half[pc*pb.npad : pc*pb.npad+pb.npad*kpad]
			gemvH(rows, ns, kpad/2, ah[i0*lda+pc:], lda, blk[q*bsz:], nr, run*bsz, out, os, add)
		}
	}
	splitChunks(npanels, per, threads, func(q0, q1 int) { smallMPackedPanels(g, ks, q0, q1, gemv) })
}

// roundRowsBF16 rounds g's A (m, k) to bf16 with roundBF16Row into
// buf.a, as (m, kpad) with kpad = k rounded up to even (an odd last column
// zero, the pair of the packing's zero), and returns it and kpad.
func roundRowsBF16(buf *gemmBuf[uint16], g *gemmJob) ([]uint16, int) {
	kpad := roundUp(g.k, 2)
	buf.a = grow(buf.a, g.m*kpad)
	for i := 0; i < g.m; i++ {
		row := buf.a[i*kpad : (i+1)*kpad]
		roundBF16Row(row[:g.k], g.a[i*g.lda:i*g.lda+g.k])
		if g.k%2 == 1 {
			row[g.k] = 0
		}
	}
	return buf.a, kpad
}

// smallMPackedPanels runs micro-panels [q0, q1) of runSmallMPacked with
// gemv (its per-block kernel call for the packing's element type). The
// depth blocks are the outer loop; within a block the panels are cut into
// ns equal runs (ns = ks.gemvWays for the rows of A) that the kernel reads
// side by side, so that one thread keeps ns sequential memory streams
// going: the packed weight is one long sequential run per block, and a
// single stream leaves a core well short of the bandwidth that Gemm's
// four distant rows of B get (about half at m = 1 on Zen 3). Every
// (panel, four rows of A) tile of C accumulates in a pooled buffer and is
// merged into C at the end.
func smallMPackedPanels(g *gemmJob, ks *gemmKernels, q0, q1 int, gemv func(i0, rows, ns, pc, kcur, q, run int, out []float32, os int, add bool)) {
	pb := g.packed
	nr, kc := pb.nr, pb.kc
	ngr := (g.m + 3) / 4 // groups of four rows of A
	tsz := 4 * nr
	buf := getBuf[float32]()
	defer putBuf(buf)
	buf.tile = grow(buf.tile, (q1-q0)*ngr*tsz)
	ns := ks.gemvWays[min(g.m, 4)]
	run := (q1 - q0) / ns // panels per stream
	if run == 0 {
		ns, run = 1, q1-q0
	}
	for pc := 0; pc < g.k; pc += kc {
		kcur := min(kc, g.k-pc)
		// panels t, t+run, …, t+(ns-1)·run side by side for t < run, then
		// the ones past ns·run one by one.
		for t := 0; t < q1-q0; {
			streams, next := ns, t+1
			if t >= run {
				streams = 1
			}
			if next == run {
				next = ns * run
			}
			for gi := 0; gi < ngr; gi++ {
				i0 := 4 * gi
				gemv(i0, min(4, g.m-i0), streams, pc, kcur, q0+t, run,
					buf.tile[(t*ngr+gi)*tsz:], run*ngr*tsz, pc > 0)
			}
			t = next
		}
	}
	for q := q0; q < q1; q++ {
		j := q * nr
		for gi := 0; gi < ngr; gi++ {
			i0 := 4 * gi
			t := buf.tile[((q-q0)*ngr+gi)*tsz : ((q-q0)*ngr+gi+1)*tsz]
			mergeTile(g.c[i0*g.ldc+j:], g.ldc, t, nr, min(4, g.m-i0), min(nr, g.n-j), g.alpha, g.beta)
		}
	}
}
