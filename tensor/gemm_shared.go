package tensor

import "sync"

// The shared-B schedule (BLIS's): threads split the rows of C, and each
// (kc, nc) block of B is packed once, every thread packing a share of its
// micro-panels into a buffer that all of them then read:
//
//	for jc in steps of nc, pc in steps of kc:
//	  thread t packs micro-panels [t·np/T, (t+1)·np/T) of B[pc:pc+kc, jc:jc+nc]
//	  barrier
//	  for ic in steps of mc over thread t's rows: pack A, run the kernels
//
// Against gemmGrid's split of C's columns (each thread packs all of A and
// its own B columns), A is packed once in all instead of once per thread,
// and each thread's kernels read all of the block of B. The B block is
// double-buffered, so one barrier per block suffices: a thread that passed
// the barrier of block i knows every thread has finished block i-1, whose
// buffer it packs block i+1 into.

// sharedBMinRows is the fewest rows of C per thread for the shared-B
// schedule: below it the threads' A blocks are thin and the barriers cost
// more than the repacking of A that they save.
const sharedBMinRows = 96

// useSharedB reports whether runBlocked takes the shared-B schedule rather
// than gemmGrid's tm×tn grid: more than one thread, B not prepacked, enough
// rows and work for every thread, and at least a quarter less packing per
// thread than the grid (whose threads pack their rows of A once per nc
// columns, and all of their columns of B). Where it saves less, the grid
// measured faster: its threads read only B that they packed themselves, and
// never wait for each other.
func useSharedB[T float32 | uint16](g *gemmJob, kn *tileKernel[T], threads, tm, tn int) bool {
	if !sharedBEnabled || threads < 2 || g.packed != nil {
		return false
	}
	work := 2 * float64(g.m) * float64(g.n) * float64(g.k)
	if work < float64(threads)*(1<<22) || g.m < threads*max(sharedBMinRows, kn.mr) {
		return false
	}
	// elements packed per thread, in units of k
	pack := func(rows, cols, bcols int) int { return rows*((cols+kn.nc-1)/kn.nc) + bcols }
	rows, cols := roundUp((g.m+tm-1)/tm, kn.mr), roundUp((g.n+tn-1)/tn, kn.nr)
	grid := pack(rows, cols, cols)
	shared := pack(roundUp((g.m+threads-1)/threads, kn.mr), g.n, (g.n+threads-1)/threads)
	return 4*shared <= 3*grid
}

// sharedBEnabled switches the shared-B schedule on (tests turn it off to
// check the grid schedule, benchmarks to compare the two).
var sharedBEnabled = true

// barrier is a reusable barrier of n goroutines, split in two so that work
// that needs nothing from the others can run between arriving and waiting.
type barrier struct {
	mu   sync.Mutex
	cond sync.Cond
	n    int
	left int
	gen  uint64
}

func newBarrier(n int) *barrier {
	b := &barrier{n: n, left: n}
	b.cond.L = &b.mu
	return b
}

// arrive counts the caller in and returns the generation to pass to await.
func (b *barrier) arrive() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	gen := b.gen
	b.left--
	if b.left == 0 {
		b.left = b.n
		b.gen++
		b.cond.Broadcast()
	}
	return gen
}

// await blocks until all n goroutines have arrived in generation gen.
func (b *barrier) await(gen uint64) {
	b.mu.Lock()
	for gen == b.gen {
		b.cond.Wait()
	}
	b.mu.Unlock()
}

// sharedBufs is the double-buffered B block of one runSharedB call.
type sharedBufs[T float32 | uint16] struct{ b [2][]T }

var sharedPools = elemPools{
	f32:  sync.Pool{New: func() any { return new(sharedBufs[float32]) }},
	bf16: sync.Pool{New: func() any { return new(sharedBufs[uint16]) }},
}

func getShared[T float32 | uint16]() *sharedBufs[T] {
	return poolOf[T](&sharedPools).Get().(*sharedBufs[T])
}
func putShared[T float32 | uint16](s *sharedBufs[T]) { poolOf[T](&sharedPools).Put(s) }

// runSharedB computes the whole job with kernel kn on threads goroutines
// (the caller's and threads-1 others) in the shared-B schedule.
func runSharedB[T float32 | uint16](g *gemmJob, kn *tileKernel[T], threads int) {
	ks := kn.kstep
	kcMax := min(kn.kc, roundUp(g.k, ks))
	ncMax := min(kn.nc, roundUp(g.n, kn.nr))
	sh := getShared[T]()
	defer putShared(sh)
	for i := range sh.b {
		sh.b[i] = grow(sh.b[i], ncMax*kcMax)
	}
	rows := roundUp((g.m+threads-1)/threads, kn.mr)
	bar := newBarrier(threads)
	runWorkers(threads, func(t int) { sharedBWorker(g, kn, sh, bar, t, threads, rows) })
}

// runWorkers runs worker(t) for t < threads, worker 0 on the calling
// goroutine and each other on its own, and returns when all are done.
func runWorkers(threads int, worker func(t int)) {
	var wg sync.WaitGroup
	for t := 1; t < threads; t++ {
		wg.Go(func() { worker(t) })
	}
	worker(0)
	wg.Wait()
}

// sharedBWorker is thread t's part of runSharedB: rows [t·rows, (t+1)·rows)
// of C, and its share of every B block's packing. Between arriving at the
// barrier and waiting there, it runs its first A block on the micro-panels
// it packed itself, so a thread that packs more slowly (or was descheduled)
// delays the others less.
func sharedBWorker[T float32 | uint16](g *gemmJob, kn *tileKernel[T], sh *sharedBufs[T], bar *barrier, t, threads, rows int) {
	mr, nr, ks := kn.mr, kn.nr, kn.kstep
	i0, i1 := min(t*rows, g.m), min((t+1)*rows, g.m)
	buf := getBuf[T]()
	defer putBuf(buf)
	buf.a = grow(buf.a, kn.asz(min(kn.mc, roundUp(max(i1-i0, 1), mr))*min(kn.kc, roundUp(g.k, ks))))
	buf.tile = grow(buf.tile, mr*nr)
	block := 0
	for jc := 0; jc < g.n; jc += kn.nc {
		ncur := min(kn.nc, g.n-jc)
		np := (ncur + nr - 1) / nr // micro-panels in this block
		for pc := 0; pc < g.k; pc += kn.kc {
			kcur, kpad, beta := kn.depthBlock(g, pc)
			bb := sh.b[block&1]
			block++
			// columns [c0, c1) of the block are this thread's share
			c0, c1 := min(t*np/threads*nr, ncur), min((t+1)*np/threads*nr, ncur)
			if c0 < c1 {
				kn.packB(bb[c0*kpad:], g, nr, pc, kcur, jc+c0, c1-c0)
			}
			gen := bar.arrive()
			// C[ic:ic+mcur, jc+j0:jc+j1] (+)= A block · B panels [j0, j1)
			run := func(ic, mcur, j0, j1 int) {
				kn.runPanels(g, buf, bb, kpad, beta, ic, mcur, jc, ncur, j0, j1)
			}
			waited := false
			for ic := i0; ic < i1; ic += kn.mc {
				mcur := min(kn.mc, i1-ic)
				kn.packA(buf.a, g, mr, ic, mcur, pc, kcur)
				if waited {
					run(ic, mcur, 0, ncur)
					continue
				}
				run(ic, mcur, c0, c1)
				bar.await(gen)
				waited = true
				run(ic, mcur, 0, c0)
				run(ic, mcur, c1, ncur)
			}
			if !waited { // no rows here: still wait, so the buffer is not reused early
				bar.await(gen)
			}
		}
	}
}

// The shared-A schedule, for a prepacked B (GemmPacked): threads split the
// columns of C, as gemmGrid does for the prefill's shapes, but A is packed
// once, every thread packing a share of its micro-panels, every depth
// block, into a buffer that all of them then read:
//
//	for chunks of rows of A (at most sharedAMaxElems elements packed):
//	  thread t packs micro-panels [t·np/T, (t+1)·np/T) of the chunk, every kc block
//	  barrier
//	  thread t: for jc in steps of nc over its columns, pc, ic: run the kernels
//	  barrier (the buffer is packed again for the next chunk)
//
// Under the grid, each thread packs all of A (rounding it to bf16, or
// transposing it into panels) once per nc of its columns: at 2 threads
// and 512 tokens that was 10% of a bf16 prefill's CPU time.

// sharedAMaxElems bounds the shared A buffer (16 MiB of float32, 8 of
// bf16): the 512-token prefill's products pack A in one chunk.
const sharedAMaxElems = 1 << 22

// useSharedA reports whether runBlocked takes the shared-A schedule:
// B prepacked, more than one thread, enough work for each, and a grid
// that splits the columns of C (so that every thread would pack all of A).
func useSharedA[T float32 | uint16](g *gemmJob, kn *tileKernel[T], threads, tm, tn int) bool {
	if threads < 2 || g.packed == nil || tn < 2 {
		return false
	}
	work := 2 * float64(g.m) * float64(g.n) * float64(g.k)
	return work >= float64(threads)*(1<<22) && g.n >= threads*kn.nr
}

// runSharedA computes the whole job (B prepacked) with kernel kn on
// threads goroutines (the caller's and threads-1 others) in the shared-A
// schedule, packing at most maxElems of A at a time (sharedAMaxElems).
func runSharedA[T float32 | uint16](g *gemmJob, kn *tileKernel[T], threads, maxElems int) {
	kround := roundUp(g.k, kn.kstep)
	chunk := max(kn.mr, maxElems/kround/kn.mr*kn.mr)
	chunk = min(chunk, roundUp(g.m, kn.mr))
	sh := getShared[T]()
	defer putShared(sh)
	sh.b[0] = grow(sh.b[0], kn.asz(chunk*kround))
	// each thread's columns: whole micro-panels, as even as they go
	np := (g.n + kn.nr - 1) / kn.nr
	threads = min(threads, np)
	bar := newBarrier(threads)
	runWorkers(threads, func(t int) { sharedAWorker(g, kn, sh.b[0], chunk, bar, t, threads) })
}

// sharedAWorker is thread t's part of runSharedA: its share of packing
// each chunk of A into a (chunk rows, every depth block), then its columns
// of C. Depth block pc of a chunk of mpad rows starts at a[pc·mpad] (every
// block before it is kc deep, a multiple of kstep); in it, micro-panel q
// starts at q·mr·kpad, so an A block of the loop nest (ic, a multiple of
// kn.mc and so of mr) starts at a[pc·mpad + ic·kpad] (in values of A:
// kn.asz elements of T each).
func sharedAWorker[T float32 | uint16](g *gemmJob, kn *tileKernel[T], a []T, chunk int, bar *barrier, t, threads int) {
	mr, nr := kn.mr, kn.nr
	np := (g.n + nr - 1) / nr
	j0, j1 := min(t*np/threads*nr, g.n), min((t+1)*np/threads*nr, g.n)
	pre := packedPanels[T](g.packed)
	pool := getBuf[T]()
	defer putBuf(pool)
	pool.tile = grow(pool.tile, mr*nr)
	buf := &gemmBuf[T]{tile: pool.tile} // a points into the shared A, never into the pool
	for r0 := 0; r0 < g.m; r0 += chunk {
		rows := min(chunk, g.m-r0)
		mpad := roundUp(rows, mr)
		panels := mpad / mr
		q0, q1 := t*panels/threads, (t+1)*panels/threads
		for pc := 0; pc < g.k; pc += kn.kc {
			kcur, kpad, _ := kn.depthBlock(g, pc)
			if i0, i1 := q0*mr, min(q1*mr, rows); i0 < i1 {
				kn.packA(a[kn.asz(pc*mpad+i0*kpad):], g, mr, r0+i0, i1-i0, pc, kcur)
			}
		}
		bar.await(bar.arrive())
		for jc := j0; jc < j1; jc += kn.nc {
			ncur := min(kn.nc, j1-jc)
			for pc := 0; pc < g.k; pc += kn.kc {
				_, kpad, beta := kn.depthBlock(g, pc)
				bb := pre[pc*g.packed.npad+jc*kpad:]
				for ic := 0; ic < rows; ic += kn.mc {
					mcur := min(kn.mc, rows-ic)
					buf.a = a[kn.asz(pc*mpad+ic*kpad):]
					kn.runPanels(g, buf, bb, kpad, beta, r0+ic, mcur, jc, ncur, 0, ncur)
				}
			}
		}
		bar.await(bar.arrive())
	}
}
