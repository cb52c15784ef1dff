package tensor

import (
	"runtime"
	"sync"
	"unsafe"
)

// The blocked GEMM (GotoBLAS/BLIS loop nest), shared by every micro-kernel:
//
//	for jc in steps of nc:            B block (kc, nc) packed, lives in L3
//	  for pc in steps of kc:
//	    pack B[pc:pc+kc, jc:jc+nc] into nr-wide micro-panels
//	    for ic in steps of mc:        A block (mc, kc) packed, lives in L2
//	      pack A[ic:ic+mc, pc:pc+kc] into mr-tall micro-panels
//	      for jr in steps of nr:      B micro-panel (kc, nr) stays in L1
//	        for ir in steps of mr:
//	          micro-kernel: C[ir:ir+mr, jr:jr+nr] (+)= A panel · B panel
//
// With enough rows for every thread and B not prepacked, threads split the
// rows of C and pack each B block together, once (runSharedB, gemm_shared.go).
// Otherwise threads split C into a grid of rectangles (gemmGrid); each thread
// runs the loop nest above on its rectangle with its own pooled buffers, so
// there is no synchronisation beyond the final wait, and the operand that is
// not split is packed once per thread.

// tileKernel is a micro-kernel with its register tile and cache blocking.
// T is the packed element type: float32, or uint16 for bf16 pairs.
type tileKernel[T float32 | uint16] struct {
	mr, nr     int // register tile of C
	kc, mc, nc int // cache blocks (kc even for bf16)
	kstep      int // 1, or 2 when the packed k dimension holds bf16 pairs
	// aw is the number of T elements per packed value of A: 1 (0 reads
	// as 1), or 2 for a bf16 kernel that takes A as float32 (the
	// widening kernels: A's float32s viewed as uint16 pairs).
	aw int
	// micro computes C[0:mr, 0:nr] = alpha·Ap·Bp + beta·C (C not read when
	// beta == 0). ku is the packed depth in units of kstep; Ap: (ku, mr) for
	// float32, (ku, mr, 2) for bf16 (packABF16), (2·ku, mr) float32 for a
	// widening kernel (aw = 2, packAF32H); Bp: (ku, nr, kstep).
	micro func(ku int, ap, bp []T, c []float32, ldc int, alpha, beta float32)
	// packA packs op(A)[i0:i0+mc, p0:p0+kc] and packB op(B)[p0:p0+kc, j0:j0+nc]
	// into micro-panels, zero-padding the last partial panel and odd k.
	packA func(dst []T, g *gemmJob, mr, i0, mc, p0, kc int)
	packB func(dst []T, g *gemmJob, nr, p0, kc, j0, nc int)
}

// gemmJob is one call's operands. Exactly one of b, bh, packed and q is set.
type gemmJob struct {
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	a              []float32 // op(A): (m, k)
	lda            int
	b              []float32 // op(B): (k, n)
	bh             []uint16  // bf16 B: (n, k), transB implied
	ldb            int
	c              []float32 // (m, n)
	ldc            int
	packed         *PackedB        // op(B) prepacked (f32, or bf16 pairs for the bf16 kernel); b, bh unset
	q              *QuantMatrix    // W (n, k) in a GGML format, transB implied; b, bh unset
	dotRows        dotRowsFunc     // the small-m path's one-row kernel (m = 1, B in place), or nil
	dotRowsH       dotRowsBF16Func // the same for a bf16 B (bh), or nil
}

// gemmBuf is one worker's scratch: packed A and B blocks and an edge tile.
type gemmBuf[T float32 | uint16] struct {
	a, b []T
	tile []float32
}

// elemPools are two pools of one scratch type, one per element type of the
// kernels: float32 and bf16 bits.
type elemPools struct{ f32, bf16 sync.Pool }

// poolOf is p's pool for elements of type T.
func poolOf[T float32 | uint16](p *elemPools) *sync.Pool {
	var z T
	if _, ok := any(z).(float32); ok {
		return &p.f32
	}
	return &p.bf16
}

var bufPools = elemPools{
	f32:  sync.Pool{New: func() any { return new(gemmBuf[float32]) }},
	bf16: sync.Pool{New: func() any { return new(gemmBuf[uint16]) }},
}

func getBuf[T float32 | uint16]() *gemmBuf[T]  { return poolOf[T](&bufPools).Get().(*gemmBuf[T]) }
func putBuf[T float32 | uint16](b *gemmBuf[T]) { poolOf[T](&bufPools).Put(b) }

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

func roundUp(x, to int) int { return (x + to - 1) / to * to }

// splitCols runs f(j0, j1) over [0, n) cut into runs of per: the first on
// this goroutine, each other on its own, and returns when all are done.
func splitCols(n, per int, f func(j0, j1 int)) {
	var wg sync.WaitGroup
	for j0 := per; j0 < n; j0 += per {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(j0, min(j0+per, n))
		}()
	}
	f(0, min(per, n))
	wg.Wait()
}

// runBlocked computes the whole job with kernel kn, split over threads.
func runBlocked[T float32 | uint16](g *gemmJob, kn *tileKernel[T], threads int) {
	tm, tn := gemmGrid(g.m, g.n, g.k, kn.mr, kn.nr, kn.nc, threads)
	if useSharedB(g, kn, threads, tm, tn) {
		runSharedB(g, kn, threads)
		return
	}
	if useSharedA(g, kn, threads, tm, tn) {
		runSharedA(g, kn, threads, sharedAMaxElems)
		return
	}
	if tm*tn == 1 {
		blockedRect(g, kn, 0, g.m, 0, g.n)
		return
	}
	rows := roundUp((g.m+tm-1)/tm, kn.mr)
	cols := roundUp((g.n+tn-1)/tn, kn.nr)
	var wg sync.WaitGroup
	for ti := 0; ti < tm; ti++ {
		for tj := 0; tj < tn; tj++ {
			i0, j0 := ti*rows, tj*cols
			i1, j1 := min(i0+rows, g.m), min(j0+cols, g.n)
			if i0 >= i1 || j0 >= j1 {
				continue
			}
			if ti == 0 && tj == 0 {
				continue // run by the caller below
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				blockedRect(g, kn, i0, i1, j0, j1)
			}()
		}
	}
	blockedRect(g, kn, 0, min(rows, g.m), 0, min(cols, g.n))
	wg.Wait()
}

// gemmGrid picks a tm×tn grid of threads for C (m, n) that minimises a
// per-thread cost model in units of k: multiply-adds (16 per cycle) plus
// packing (one element per cycle; A is repacked for every nc columns).
func gemmGrid(m, n, k, mr, nr, nc, threads int) (tm, tn int) {
	const minFlopsPerThread = 1 << 22 // ≈ 40 µs: dwarfs starting a goroutine
	work := 2 * float64(m) * float64(n) * float64(k)
	threads = min(threads, max(1, int(work/minFlopsPerThread)))
	tm, tn = 1, 1
	best := -1.0
	for t := threads; t >= 1 && t*2 > threads; t-- { // use most of the threads
		for a := 1; a <= t; a++ {
			if t%a != 0 {
				continue
			}
			b := t / a
			if a > (m+mr-1)/mr || b > (n+nr-1)/nr {
				continue
			}
			rows := float64(roundUp((m+a-1)/a, mr))
			cols := float64(roundUp((n+b-1)/b, nr))
			cost := rows*cols/16 + rows*float64((int(cols)+nc-1)/nc) + cols
			if best < 0 || cost < best {
				best, tm, tn = cost, a, b
			}
		}
	}
	return tm, tn
}

// blockedRect runs the loop nest on C[i0:i1, j0:j1] on the calling goroutine.
func blockedRect[T float32 | uint16](g *gemmJob, kn *tileKernel[T], i0, i1, j0, j1 int) {
	mr, nr, ks := kn.mr, kn.nr, kn.kstep
	kcMax := min(kn.kc, roundUp(g.k, ks))
	ncMax := min(kn.nc, roundUp(j1-j0, nr))
	mcMax := min(kn.mc, roundUp(i1-i0, mr))
	buf := getBuf[T]()
	defer putBuf(buf)
	buf.a = grow(buf.a, kn.asz(mcMax*kcMax))
	var pre []T // prepacked op(B), or nil
	if g.packed != nil {
		pre = packedPanels[T](g.packed)
	} else {
		buf.b = grow(buf.b, ncMax*kcMax)
	}
	buf.tile = grow(buf.tile, mr*nr)
	for jc := j0; jc < j1; jc += kn.nc {
		ncur := min(kn.nc, j1-jc)
		for pc := 0; pc < g.k; pc += kn.kc {
			kcur, kpad, beta := kn.depthBlock(g, pc)
			bb := buf.b
			if pre != nil { // block pc, panels from column jc
				bb = pre[pc*g.packed.npad+jc*kpad:]
			} else {
				kn.packB(bb, g, nr, pc, kcur, jc, ncur)
			}
			for ic := i0; ic < i1; ic += kn.mc {
				mcur := min(kn.mc, i1-ic)
				kn.packA(buf.a, g, mr, ic, mcur, pc, kcur)
				kn.runPanels(g, buf, bb, kpad, beta, ic, mcur, jc, ncur, 0, ncur)
			}
		}
	}
}

// packedPanels returns pb's panels as T: the float32 ones, or the bf16
// pairs of a PackBBF16 packing.
func packedPanels[T float32 | uint16](pb *PackedB) []T {
	var pre []T
	switch p := any(&pre).(type) {
	case *[]float32:
		*p = pb.data
	case *[]uint16:
		*p = pb.half
	}
	return pre
}

// depthBlock returns the depth block of op(A)·op(B) that starts at pc: its
// depth kcur, its packed depth kpad (kcur rounded up to the kernel's kstep)
// and the beta its kernels apply to C: the job's for the first block, 1
// after it (C then holds the sum of the blocks before).
func (kn *tileKernel[T]) depthBlock(g *gemmJob, pc int) (kcur, kpad int, beta float32) {
	kcur = min(kn.kc, g.k-pc)
	beta = g.beta
	if pc > 0 {
		beta = 1
	}
	return kcur, roundUp(kcur, kn.kstep), beta
}

// asz is the number of T elements that n packed values of A take.
func (kn *tileKernel[T]) asz(n int) int { return n * max(kn.aw, 1) }

// runPanels computes C[ic:ic+mcur, jc+j0:jc+j1] (+)= the packed A block in
// buf.a · the B micro-panels [j0, j1) of bb (a block of ncur columns from
// jc, packed depth kpad), tile by tile; edge tiles go through buf.tile.
// beta scales C (1 after the first k block).
func (kn *tileKernel[T]) runPanels(g *gemmJob, buf *gemmBuf[T], bb []T, kpad int, beta float32, ic, mcur, jc, ncur, j0, j1 int) {
	mr, nr, ku := kn.mr, kn.nr, kpad/kn.kstep
	c, ldc := g.c, g.ldc
	for jr := j0; jr < j1; jr += nr {
		bp := bb[jr*kpad : (jr+nr)*kpad]
		nrem := min(nr, ncur-jr)
		for ir := 0; ir < mcur; ir += mr {
			ap := buf.a[kn.asz(ir*kpad):kn.asz((ir+mr)*kpad)]
			mrem := min(mr, mcur-ir)
			off := (ic+ir)*ldc + jc + jr
			if mrem == mr && nrem == nr {
				kn.micro(ku, ap, bp, c[off:], ldc, g.alpha, beta)
				continue
			}
			kn.micro(ku, ap, bp, buf.tile, nr, 1, 0)
			mergeTile(c[off:], ldc, buf.tile, nr, mrem, nrem, g.alpha, beta)
		}
	}
}

// mergeTile writes C[0:mrem, 0:nrem] = alpha·t + beta·C (C unread if beta == 0).
func mergeTile(c []float32, ldc int, t []float32, ldt, mrem, nrem int, alpha, beta float32) {
	for r := 0; r < mrem; r++ {
		cr := c[r*ldc : r*ldc+nrem]
		tr := t[r*ldt : r*ldt+nrem]
		if beta == 0 {
			for q, v := range tr {
				cr[q] = alpha * v
			}
		} else {
			for q, v := range tr {
				cr[q] = alpha*v + beta*cr[q]
			}
		}
	}
}

// packAF32 packs op(A)[i0:i0+mc, p0:p0+kc] as (mc/mr panels, kc, mr).
func packAF32(dst []float32, g *gemmJob, mr, i0, mc, p0, kc int) {
	packF32Panels(dst, g.a, g.lda, g.transA, mr, i0, mc, p0, kc) // A (k, m) when transA
}

// packF32Panels packs the xc×kc block at (x0, p0) of a float32 operand m
// (leading dimension ld) as (xc/w panels, kc, w), element (x, p) at
// panel x/w, row p, column x%w, zero-padding the last panel. The operand
// holds (x, p) at m[p·ld+x] when kMajor (each p gives w contiguous values),
// else at m[x·ld+p]: op(A) (m, k) and op(B)ᵀ (n, k) pack alike.
func packF32Panels(dst, m []float32, ld int, kMajor bool, w, x0, xc, p0, kc int) {
	for xr := 0; xr < xc; xr += w {
		d := dst[xr*kc : (xr+w)*kc]
		rows := min(w, xc-xr)
		if kMajor {
			for p := 0; p < kc; p++ {
				src := m[(p0+p)*ld+x0+xr:]
				dp := d[p*w : p*w+w]
				copy(dp, src[:rows])
				clear(dp[rows:])
			}
			continue
		}
		packStrided(d, m, (x0+xr)*ld+p0, ld, rows, w, kc)
	}
}

// packStrided writes d[p·w+q] = src[off+q·ld+p] for q < rows, p < kc, and
// zeros for rows ≤ q < w: the transposing copy of a row-major panel. Rows
// are read four at a time as sequential streams; the panel being written
// (kc·w floats) stays in L1. Where there is assembly (transposeRows), it
// does groups of 8 and 4 rows over the first kc rounded down to 8 columns.
func packStrided(d, src []float32, off, ld, rows, w, kc int) {
	d = d[:kc*w]
	q := 0
	if n8 := kc &^ 7; w != 6 {
		q = transposeRows(d, src, off, ld, rows, w, n8)
		for r := 0; r < q; r++ { // the last kc % 8 columns of those rows
			for p := n8; p < kc; p++ {
				d[p*w+r] = src[off+r*ld+p]
			}
		}
	}
	if w == 6 && rows == 6 { // the AVX2 kernel's A panel: all six rows in one sweep
		o := off
		r0 := src[o : o+kc]
		r1 := src[o+ld : o+ld+len(r0)]
		r2 := src[o+2*ld : o+2*ld+len(r0)]
		r3 := src[o+3*ld : o+3*ld+len(r0)]
		r4 := src[o+4*ld : o+4*ld+len(r0)]
		r5 := src[o+5*ld : o+5*ld+len(r0)]
		for p, v := range r0 {
			dp := d[p*6 : p*6+6 : p*6+6]
			dp[0], dp[1], dp[2], dp[3], dp[4], dp[5] = v, r1[p], r2[p], r3[p], r4[p], r5[p]
		}
		return
	}
	for ; q+4 <= rows; q += 4 {
		o := off + q*ld
		r0 := src[o : o+kc]
		r1 := src[o+ld : o+ld+len(r0)]
		r2 := src[o+2*ld : o+2*ld+len(r0)]
		r3 := src[o+3*ld : o+3*ld+len(r0)]
		for p, v := range r0 {
			dp := d[p*w+q : p*w+q+4 : p*w+q+4]
			dp[0], dp[1], dp[2], dp[3] = v, r1[p], r2[p], r3[p]
		}
	}
	for ; q < rows; q++ {
		for p, v := range src[off+q*ld : off+q*ld+kc] {
			d[p*w+q] = v
		}
	}
	for ; q < w; q++ {
		for p := 0; p < kc; p++ {
			d[p*w+q] = 0
		}
	}
}

// packBF32 packs op(B)[p0:p0+kc, j0:j0+nc] as (nc/nr panels, kc, nr).
func packBF32(dst []float32, g *gemmJob, nr, p0, kc, j0, nc int) {
	packF32Panels(dst, g.b, g.ldb, !g.transB, nr, j0, nc, p0, kc) // B (k, n) unless transB
}

// packBWiden packs a bf16 B (n, k) as float32 panels (nc/nr, kc, nr),
// widening exactly.
func packBWiden(dst []float32, g *gemmJob, nr, p0, kc, j0, nc int) {
	b, ldb := g.bh, g.ldb
	// Each row segment is widened (vectorized, widenHalf) into a scratch,
	// then transposed into the panel as packBQuant does.
	s := quantScratchPool.Get().(*quantScratch)
	defer quantScratchPool.Put(s)
	s.f = grow(s.f, nr*kc)
	for jr := 0; jr < nc; jr += nr {
		cols := min(nr, nc-jr)
		for r := 0; r < cols; r++ {
			row := b[(j0+jr+r)*ldb+p0:][:kc]
			widenHalf(s.f[r*kc:(r+1)*kc], unsafe.Slice((*byte)(unsafe.Pointer(&row[0])), 2*kc), true)
		}
		packStrided(dst[jr*kc:(jr+nr)*kc], s.f, 0, kc, cols, nr, kc)
	}
}

// packBBF16 packs a bf16 B (n, k) as (nc/nr panels, kc/2, nr, 2).
func packBBF16(dst []uint16, g *gemmJob, nr, p0, kc, j0, nc int) {
	b, ldb := g.bh, g.ldb
	kp := roundUp(kc, 2)
	for jr := 0; jr < nc; jr += nr {
		d := dst[jr*kp : (jr+nr)*kp]
		cols := min(nr, nc-jr)
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
				d[(p>>1)*2*nr+2*q+p&1] = v
			}
			if kc&1 == 1 {
				d[(kc>>1)*2*nr+2*q+1] = 0
			}
		}
	}
}

// microGo2x4 is the portable micro-kernel: a 2×4 tile in 8 locals (a larger
// tile makes the Go compiler spill accumulators, which measured slower).
func microGo2x4(ku int, ap, bp []float32, c []float32, ldc int, alpha, beta float32) {
	var c00, c01, c02, c03, c10, c11, c12, c13 float32
	ap, bp = ap[:2*ku], bp[:4*ku]
	for p := 0; p < ku; p++ {
		a := ap[2*p : 2*p+2 : 2*p+2]
		b := bp[4*p : 4*p+4 : 4*p+4]
		a0, a1 := a[0], a[1]
		b0, b1, b2, b3 := b[0], b[1], b[2], b[3]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
	}
	t := [8]float32{c00, c01, c02, c03, c10, c11, c12, c13}
	mergeTile(c, ldc, t[:], 4, 2, 4, alpha, beta)
}

// dot4Func computes out[q] = Σ_{p<k} a[p]·B[q·ldb+p] for q < 4; k is a
// multiple of 8 (callers add the tail).
type dot4Func func(k int, a []float32, b []float32, ldb int, out *[4]float32)

// dot4BF16Func is dot4Func for a bf16 B.
type dot4BF16Func func(k int, a []float32, b []uint16, ldb int, out *[4]float32)

func dot4Go(k int, a []float32, b []float32, ldb int, out *[4]float32) {
	a = a[:k]
	b0, b1, b2, b3 := b[:k], b[ldb:ldb+k], b[2*ldb:2*ldb+k], b[3*ldb:3*ldb+k]
	var s0, s1, s2, s3 float32
	for p, av := range a {
		s0 += av * b0[p]
		s1 += av * b1[p]
		s2 += av * b2[p]
		s3 += av * b3[p]
	}
	*out = [4]float32{s0, s1, s2, s3}
}

func dot4BF16Go(k int, a []float32, b []uint16, ldb int, out *[4]float32) {
	a = a[:k]
	b0, b1, b2, b3 := b[:k], b[ldb:ldb+k], b[2*ldb:2*ldb+k], b[3*ldb:3*ldb+k]
	var s0, s1, s2, s3 float32
	for p, av := range a {
		s0 += av * BF16ToF32(b0[p])
		s1 += av * BF16ToF32(b1[p])
		s2 += av * BF16ToF32(b2[p])
		s3 += av * BF16ToF32(b3[p])
	}
	*out = [4]float32{s0, s1, s2, s3}
}

// smallMMax is the largest m run as dot products (transB only): below it the
// register tile would be mostly padding and packing B would double the
// memory traffic of a product that is bound by reading B.
const smallMMax = 8

// runSmallM computes C = alpha·op(A)·Bᵀ + beta·C for m ≤ smallMMax with B
// (n, k) read in place. Columns of C are split over threads; within a thread
// four rows of B at a time stay in L1 while every row of A passes over them.
func runSmallM(g *gemmJob, dot dot4Func, dotH dot4BF16Func, threads int) {
	m, n, k := g.m, g.n, g.k
	buf := getBuf[float32]()
	defer putBuf(buf)
	// rows of op(A), contiguous: A itself, or a transposed copy.
	arows, lda := g.a, g.lda
	if g.transA {
		buf.tile = grow(buf.tile, m*k)
		for i := 0; i < m; i++ {
			for p := 0; p < k; p++ {
				buf.tile[i*k+p] = g.a[p*g.lda+i]
			}
		}
		arows, lda = buf.tile, k
	}
	work := 2 * float64(m) * float64(n) * float64(k)
	threads = min(threads, max(1, int(work/(1<<22))), (n+3)/4)
	// about four runs per thread, handed out as threads come free
	per := roundUp((n+4*threads-1)/(4*threads), 4)
	if threads == 1 {
		per = n
	}
	splitChunks(n, per, threads, func(j0, j1 int) { smallMCols(g, arows, lda, dot, dotH, j0, j1) })
}

func smallMCols(g *gemmJob, a []float32, lda int, dot dot4Func, dotH dot4BF16Func, j0, j1 int) {
	k, ldb, ldc := g.k, g.ldb, g.ldc
	k8 := k &^ 7
	var s [4]float32
	// m = 1: whole runs of four rows of B in one call (float32 or bf16 B)
	if n4 := (j1 - j0) / 4; g.m == 1 && g.alpha == 1 && g.beta == 0 && k%16 == 0 && n4 > 0 {
		switch out := g.c[j0 : j0+4*n4]; {
		case g.bh == nil && g.dotRows != nil:
			g.dotRows(k, a[:k], g.b[j0*ldb:], ldb, n4, out)
			j0 += 4 * n4
		case g.bh != nil && g.dotRowsH != nil:
			g.dotRowsH(k, a[:k], g.bh[j0*ldb:], ldb, n4, out)
			j0 += 4 * n4
		}
	}
	for j := j0; j < j1; j += 4 {
		nq := min(4, j1-j)
		for i := 0; i < g.m; i++ {
			ar := a[i*lda : i*lda+k]
			if nq == 4 {
				if g.bh != nil {
					dotH(k8, ar, g.bh[j*ldb:], ldb, &s)
				} else {
					dot(k8, ar, g.b[j*ldb:], ldb, &s)
				}
			} else {
				s = [4]float32{}
			}
			start := k8
			if nq < 4 {
				start = 0
			}
			for q := 0; q < nq; q++ {
				sum := s[q]
				if g.bh != nil {
					br := g.bh[(j+q)*ldb : (j+q)*ldb+k]
					for p := start; p < k; p++ {
						sum += ar[p] * BF16ToF32(br[p])
					}
				} else {
					br := g.b[(j+q)*ldb : (j+q)*ldb+k]
					for p := start; p < k; p++ {
						sum += ar[p] * br[p]
					}
				}
				ci := i*ldc + j + q
				if g.beta == 0 {
					g.c[ci] = g.alpha * sum
				} else {
					g.c[ci] = g.alpha*sum + g.beta*g.c[ci]
				}
			}
		}
	}
}

// gemmKernels is one complete implementation: a float32 tile kernel, an
// optional native bf16 kernel, and the dot kernels of the small-m path.
type gemmKernels struct {
	name   string
	f32    *tileKernel[float32]
	wide   *tileKernel[float32] // f32 kernel packing a bf16 B widened
	quant  *tileKernel[float32] // f32 kernel dequantizing a QuantMatrix B
	quantN *tileKernel[float32] // the same with the QuantMatrix used untransposed (GemmQuantN)
	bf16   *tileKernel[uint16]  // nil: GemmBF16 uses wide
	// bf16w, where set on a set without bf16, is f32's tile and blocking
	// reading a B of bf16 pairs (PackBBF16Bits) and widening it in the
	// kernel: the products and sums of wide, bit for bit, from half the
	// bytes and no per-call widening (withWideBF16).
	bf16w *tileKernel[uint16]
	// gemvBF16W is gemvBF16 for bf16w's packings: the same operands, each
	// lane summed as bf16w sums it (k by k, one FMA each), so that a small
	// m gives its blocked kernel's bits.
	gemvBF16W gemvBF16Func
	dot4      dot4Func
	dot4BF16  dot4BF16Func
	gemv      gemvFunc // GemmPacked's small-m kernel on f32 panels
	// gemvN runs gemv over several panel segments at once; gemvWays[rows]
	// is the number of segments it reads at once best for rows (1..4) of A.
	gemvN    gemvStreamsFunc
	gemvWays [5]int
	// gemvBF16 is gemvN for bf16 pair panels (PackBBF16), the same ways.
	gemvBF16 gemvBF16Func
	// dotRows, where set, runs Gemm's m = 1 products with B (n, k) read
	// in place (decode times the LM head) in one call per thread; dotRowsH
	// the same with a bf16 B (GemmBF16, and GemmQuant on a BF16 matrix:
	// the tied head of a bf16 GGUF).
	dotRows  dotRowsFunc
	dotRowsH dotRowsBF16Func
}

// dotRowsFunc computes out[j] = Σ_{p<k} a[p]·b[j·ldb+p] for j < 4·n, with
// k a multiple of 16.
type dotRowsFunc func(k int, a, b []float32, ldb, n int, out []float32)

// dotRowsBF16Func is dotRowsFunc for a bf16 B, widened exactly.
type dotRowsBF16Func func(k int, a []float32, b []uint16, ldb, n int, out []float32)

func newGemmKernels(name string, f32 tileKernel[float32], bf16 *tileKernel[uint16], dot dot4Func, dotH dot4BF16Func) *gemmKernels {
	f32.packA, f32.packB = packAF32, packBF32
	wide := f32
	wide.packB = packBWiden
	quant := f32
	quant.packB = packBQuant
	quantN := f32
	quantN.packB = packBQuantN
	if bf16 != nil {
		bf16.packA, bf16.packB = packABF16, packBBF16
	}
	return &gemmKernels{name: name, f32: &f32, wide: &wide, quant: &quant, quantN: &quantN, bf16: bf16, dot4: dot, dot4BF16: dotH,
		gemv: gemvGo, gemvN: gemvStreamsGo, gemvWays: [5]int{1, 1, 1, 1, 1}, gemvBF16: gemvBF16Go}
}

// withWideBF16 sets bf16w to f32's tile and blocking with micro, a
// kernel on float32 A panels (2·ku, mr) and bf16 pair B panels (ku, nr, 2)
// (genF32H), which multiplies the pairs' values widened, k by k, as f32's
// kernel does on wide's panels.
func (ks *gemmKernels) withWideBF16(micro func(ku int, ap, bp []uint16, c []float32, ldc int, alpha, beta float32), gemv gemvBF16Func) *gemmKernels {
	f := ks.f32
	if f.kc%2 != 0 {
		panic("tensor: a widening bf16 kernel needs an even kc")
	}
	ks.bf16w = &tileKernel[uint16]{mr: f.mr, nr: f.nr, kc: f.kc, mc: f.mc, nc: f.nc, kstep: 2, aw: 2,
		micro: micro, packA: packAF32H, packB: packBBF16}
	ks.gemvBF16W = gemv
	return ks
}

// halfKernel is the kernel that bf16 pair panels are packed for: the
// native one, else the widening one, else nil.
func (ks *gemmKernels) halfKernel() *tileKernel[uint16] {
	if ks.bf16 != nil {
		return ks.bf16
	}
	return ks.bf16w
}

// gemvFunc computes out[i·nr+q] (+)= Σ_{p<ku} a[i·lda+p]·b[p·nr+q] for
// i < rows (1..4), q < nr: rows of A times one packed micro-panel b (ku, nr)
// of PackedB, added to out when add. out: (rows, nr).
type gemvFunc func(rows, ku int, a []float32, lda int, b []float32, nr int, out []float32, add bool)

// gemvStreamsFunc computes ns gemvFunc products at once, on panel segments
// b[s·bs:] into out[s·os:] for s < ns (all rows of A and the same depth):
// a kernel that reads the ns distant segments together keeps several
// memory streams in flight.
type gemvStreamsFunc func(rows, ns, ku int, a []float32, lda int, b []float32, nr, bs int, out []float32, os int, add bool)

// gemvStreamsGo is the portable gemvStreamsFunc: one segment after another.
func gemvStreamsGo(rows, ns, ku int, a []float32, lda int, b []float32, nr, bs int, out []float32, os int, add bool) {
	for s := 0; s < ns; s++ {
		gemvGo(rows, ku, a, lda, b[s*bs:], nr, out[s*os:], add)
	}
}

// gemvBF16Func is gemvStreamsFunc for bf16 pair panels, (kp, nr, 2) each
// (a depth block of PackBBF16), and A given as bf16 rows (rounded as
// packABF16 rounds them, the odd last element paired with a zero):
//
//	out[s·os+i·nr+q] (+)= Σ_{p<kp} a[i·lda+2p]·b[s·bs+(p·nr+q)·2] + a[i·lda+2p+1]·b[s·bs+(p·nr+q)·2+1]
//
// for s < ns, i < rows (1..4), q < nr, each lane summed as VDPBF16PS sums
// (from zero, pair by pair in order of p, the odd product added first,
// each addition rounded to float32; the products of bf16 are exact), and
// added to out when add.
type gemvBF16Func func(rows, ns, kp int, a []uint16, lda int, b []uint16, nr, bs int, out []float32, os int, add bool)

// gemvBF16Go is the portable gemvBF16Func, the model of the VDPBF16PS
// kernels (microGoPairs' sums for one row).
func gemvBF16Go(rows, ns, kp int, a []uint16, lda int, b []uint16, nr, bs int, out []float32, os int, add bool) {
	gemvPairsGo(true, rows, ns, kp, a, lda, b, nr, bs, out, os, add)
}

// gemvBF16WGo is the portable gemvBF16Func of a widening set (the model of
// genGemvWide's kernels, with the sums of microGoTileH: each lane from
// zero, k by k, the even element of a pair first).
func gemvBF16WGo(rows, ns, kp int, a []uint16, lda int, b []uint16, nr, bs int, out []float32, os int, add bool) {
	gemvPairsGo(false, rows, ns, kp, a, lda, b, nr, bs, out, os, add)
}

// gemvPairsGo is gemvBF16Func in Go, each pair's odd product added first
// (oddFirst, VDPBF16PS's order) or its even one.
func gemvPairsGo(oddFirst bool, rows, ns, kp int, a []uint16, lda int, b []uint16, nr, bs int, out []float32, os int, add bool) {
	var accBuf [64]float32
	acc := accBuf[:nr]
	for s := 0; s < ns; s++ {
		bp := b[s*bs : s*bs+2*kp*nr]
		for i := 0; i < rows; i++ {
			ar := a[i*lda : i*lda+2*kp]
			clear(acc)
			for p := 0; p < kp; p++ {
				a0, a1 := BF16ToF32(ar[2*p]), BF16ToF32(ar[2*p+1])
				bq := bp[2*p*nr : 2*p*nr+2*nr]
				for q := range acc {
					if oddFirst {
						acc[q] += a1 * BF16ToF32(bq[2*q+1])
						acc[q] += a0 * BF16ToF32(bq[2*q])
					} else {
						acc[q] += a0 * BF16ToF32(bq[2*q])
						acc[q] += a1 * BF16ToF32(bq[2*q+1])
					}
				}
			}
			o := out[s*os+i*nr : s*os+i*nr+nr]
			for q, v := range acc {
				if add {
					o[q] += v
				} else {
					o[q] = v
				}
			}
		}
	}
}

// gemvGo is the portable gemvFunc.
func gemvGo(rows, ku int, a []float32, lda int, b []float32, nr int, out []float32, add bool) {
	b = b[:ku*nr]
	for i := 0; i < rows; i++ {
		ar := a[i*lda : i*lda+ku]
		o := out[i*nr : i*nr+nr]
		if !add {
			clear(o)
		}
		for p, av := range ar {
			for q, bv := range b[p*nr : p*nr+len(o)] {
				o[q] += av * bv
			}
		}
	}
}

// emptyGemm finishes a product C = alpha·op(A)·op(B) + beta·C (C (m, n),
// inner dimension k) that adds up no products: with no C (m or n is 0) it
// does nothing, with an empty sum (k or alpha is 0) it sets C = beta·C. It
// reports whether it did; the caller then returns.
func emptyGemm(m, n, k int, alpha, beta float32, c []float32, ldc int) bool {
	if m == 0 || n == 0 {
		return true
	}
	if alpha == 0 || k == 0 {
		scaleC(m, n, beta, c, ldc)
		return true
	}
	return false
}

// scaleC sets C = beta·C (zero when beta == 0).
func scaleC(m, n int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		r := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(r)
			continue
		}
		for j := range r {
			r[j] *= beta
		}
	}
}

func (ks *gemmKernels) gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int,
	b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkGemm("tensor.Gemm", transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	if emptyGemm(m, n, k, alpha, beta, c, ldc) {
		return
	}
	g := gemmJob{transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, beta: beta,
		a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc, dotRows: ks.dotRows}
	threads := runtime.GOMAXPROCS(0)
	if transB && m <= smallMMax {
		runSmallM(&g, ks.dot4, ks.dot4BF16, threads)
		return
	}
	runBlocked(&g, ks.f32, threads)
}

func (ks *gemmKernels) gemmBF16(m, n, k int, a []float32, lda int, b []uint16, ldb int, c []float32, ldc int) {
	checkGemm("tensor.GemmBF16", false, true, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	if emptyGemm(m, n, k, 1, 0, c, ldc) {
		return
	}
	threads := runtime.GOMAXPROCS(0)
	if m <= smallMMax || ks.bf16 == nil {
		// Every path rounds A to bf16 (GemmBF16's numerics): the native
		// blocked kernel as it packs A, the others here, on a copy, before
		// their exact products with the widened B.
		buf := getBuf[float32]()
		defer putBuf(buf)
		buf.a = grow(buf.a, m*k)
		roundBF16F32Rows(buf.a, m, k, a, lda, threads)
		a, lda = buf.a, k
	}
	g := gemmJob{transB: true, m: m, n: n, k: k, alpha: 1, beta: 0,
		a: a, lda: lda, bh: b, ldb: ldb, c: c, ldc: ldc, dotRowsH: ks.dotRowsH}
	switch {
	case m <= smallMMax:
		runSmallM(&g, ks.dot4, ks.dot4BF16, threads)
	case ks.bf16 != nil:
		runBlocked(&g, ks.bf16, threads)
	default:
		runBlocked(&g, ks.wide, threads)
	}
}

// goKernels is the portable implementation, valid on every CPU.
var goKernels = newGemmKernels("go", tileKernel[float32]{
	mr: 2, nr: 4, kc: 256, mc: 128, nc: 2048, kstep: 1, micro: microGo2x4,
}, nil, dot4Go, dot4BF16Go)
