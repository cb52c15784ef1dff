package tensor

import (
	"fmt"
	"math"
	"runtime"
	"sync"
)

// CrossEntropyLMHead computes next-token cross-entropy through a frozen LM
// head, logits_t = W_pred·y_t, in chunks of positions so that no (T, V)
// matrix is ever held whole: at most chunk rows of logits live in scratch.
// Each chunk is a run of consecutive counted positions, so ignored positions
// (target −1, e.g. a prompt under answer-only masking) cost no GEMM.
//
//	dy:      (T, D) += gradScale · d(lossSum)/dy, or nil for the loss only
//	y:       (T, D) head input
//	wPred:   (V, D) LM head, row-major as in safetensors
//	targets: (T) in [0, V), or −1 for an ignored position
//	scratch: at least chunk·V floats
//
// It returns the loss summed over counted positions and their count. The
// softmax is max-subtracted; each e^(z−max) is computed once, in float32
// by the vectorised exp of exp.go (within about 2 ulp), kept in the row and
// summed in float64; the gradient row is e·(gradScale/Σe) − gradScale·onehot.
// The logit GEMMs run through Gemm (all cores); the per-row softmax is
// spread over cores. A caller that calls it repeatedly with the same head
// should pack it once and use CrossEntropyLMHeadPacked, which skips the
// per-chunk packing of wPred (the same result, bit for bit).
func CrossEntropyLMHead(dy, y, wPred []float32, targets []int32, T, D, V, chunk int, gradScale float32, scratch []float32) (lossSum float64, count int) {
	if chunk < 1 || len(scratch) < chunk*V {
		panic("tensor.CrossEntropyLMHead: scratch must hold chunk·V floats, chunk >= 1")
	}
	if len(wPred) < V*D {
		panic("tensor.CrossEntropyLMHead: y, wPred, targets or dy too short")
	}
	logits := func(l []float32, t0, nc int) {
		// logits: (nc, V) = y[t0:t0+nc] · wPredᵀ
		Gemm(false, true, nc, V, D, 1, y[t0*D:], D, wPred, D, 0, l, V)
	}
	grad := func(l []float32, t0, nc int) {
		// dy[t0:t0+nc] += dlogits · wPred
		Gemm(false, false, nc, D, V, 1, l, V, wPred, D, 1, dy[t0*D:], D)
	}
	x := xentJob{op: "tensor.CrossEntropyLMHead", dy: dy, y: y, targets: targets, T: T, D: D, V: V,
		chunk: chunk, gradScale: gradScale, scratch: scratch, logitsOf: logits, grad: grad}
	return x.run()
}

// CrossEntropyLMHeadPacked is CrossEntropyLMHead with the head W_pred
// (V, D) also packed once by the caller, for a head that is used for many
// calls (the frozen LM head of every carry-on step):
//
//	wPred: (V, D), as for CrossEntropyLMHead (runs of at most 8 positions
//	       multiply it directly, as Gemm does)
//	wt:    PackB(true, V, D, wPred, D), the logits' operand W_predᵀ (D, V)
//	w:     PackB(false, D, V, wPred, D), dy's operand W_pred; may be nil when dy is nil
//
// V and D are taken from wt. The result is bitwise that of
// CrossEntropyLMHead: GemmPacked runs Gemm's blocked kernel in the same
// order, and every element is computed the same way whichever rows a
// thread owns. The packings must be of wPred (not checked beyond their
// shapes).
//
// With wt and w packed by PackBBF16 (the native bf16 kernel), the head is
// held in bf16 and y and the softmax gradient rows are rounded to bf16 as
// they are packed: half the memory, twice the multiply rate, and results
// within the tolerance stated in TestCrossEntropyLMHeadPackedBF16 instead
// of bitwise.
//
// With the head packed there is nothing to pack per call but the rows of
// the chunk, so the work is split over cores by positions instead of by
// vocabulary columns: each goroutine takes a slab of rows of the chunk
// (a multiple of the micro-kernel's height) and runs its logits GEMM, its
// softmax rows and its dy GEMM alone, with no barrier between the three
// stages. Each dlogits row is then packed once (not once per column
// slice), and no core waits on another within a chunk.
func CrossEntropyLMHeadPacked(dy, y, wPred []float32, wt, w *PackedB, targets []int32, T, chunk int, gradScale float32, scratch []float32) (lossSum float64, count int) {
	V, D := wt.N(), wt.K()
	if len(wPred) < V*D {
		panic("tensor.CrossEntropyLMHeadPacked: wPred too short")
	}
	if dy != nil && (w == nil || w.N() != D || w.K() != V) {
		panic(fmt.Sprintf("tensor.CrossEntropyLMHeadPacked: w must be W_pred packed (k=%d, n=%d) when dy is set", V, D))
	}
	if wt.kern != w.kernOr(wt.kern) || (w != nil && w.BF16() != wt.BF16()) {
		panic("tensor.CrossEntropyLMHeadPacked: wt and w were packed for different kernels")
	}
	logits := func(l []float32, t0, nc int) {
		if nc <= smallMMax && !wt.BF16() { // Gemm's dot-product path, as CrossEntropyLMHead takes
			Gemm(false, true, nc, V, D, 1, y[t0*D:], D, wPred, D, 0, l, V)
			return
		}
		GemmPacked(nc, 1, y[t0*D:], D, wt, 0, l, V)
	}
	grad := func(l []float32, t0, nc int) {
		GemmPacked(nc, 1, l, V, w, 1, dy[t0*D:], D)
	}
	x := xentJob{op: "tensor.CrossEntropyLMHeadPacked", dy: dy, y: y, targets: targets, T: T, D: D, V: V,
		chunk: chunk, gradScale: gradScale, scratch: scratch, logitsOf: logits, grad: grad}
	// A slab of rows runs alone: logits, softmax and dy on one goroutine.
	x.slab = func(l []float32, t0, nc int, loss []float64) {
		gemmPackedThreads(1, nc, y[t0*D:], D, wt, 0, l, V)
		x.softmaxRows(l, t0, 0, nc, loss)
		if dy != nil {
			gemmPackedThreads(1, nc, l, V, w, 1, dy[t0*D:], D)
		}
	}
	x.slabRows = wt.kern.f32.mr
	return x.run()
}

// CrossEntropyLMHeadQuant is CrossEntropyLMHead with the head W_pred
// (V, D) in a GGML format (F16, BF16, Q8_0, Q4_K, Q6_K), e.g. memory-mapped
// from the base's file: it is never expanded to float32 as a whole; each
// chunk's logits (GemmQuant) and dy (GemmQuantN) decode blocks of it into
// the GEMM's panels. The result is that of CrossEntropyLMHead on the
// decoded head up to the order of float32 additions of the small-m path
// (bitwise for runs of more than 8 positions).
func CrossEntropyLMHeadQuant(dy, y []float32, w QuantMatrix, targets []int32, T, chunk int, gradScale float32, scratch []float32) (lossSum float64, count int) {
	V, D := w.Rows, w.Cols
	logits := func(l []float32, t0, nc int) {
		GemmQuant(nc, y[t0*D:], D, w, l, V)
	}
	grad := func(l []float32, t0, nc int) {
		GemmQuantN(nc, l, V, w, 1, dy[t0*D:], D)
	}
	x := xentJob{op: "tensor.CrossEntropyLMHeadQuant", dy: dy, y: y, targets: targets, T: T, D: D, V: V,
		chunk: chunk, gradScale: gradScale, scratch: scratch, logitsOf: logits, grad: grad}
	return x.run()
}

// LMHeadChunk returns a chunk size (positions per block of logits) for
// the CrossEntropyLMHead functions of at most maxRows: maxRows rounded
// down to a multiple of the micro-kernel's height times GOMAXPROCS when it
// holds one, so that CrossEntropyLMHeadPacked's slabs of rows (one per
// core) are equal and whole tiles. E.g. 55 positions at V = 151936 would
// run as slabs of 36 and 19 rows on two cores (three tile rows against
// two, a quarter of the time idle); 48 runs as 24 and 24.
func LMHeadChunk(maxRows int) int {
	unit := gemmBest.f32.mr * max(1, runtime.GOMAXPROCS(0))
	if maxRows >= unit {
		return maxRows / unit * unit
	}
	return max(1, maxRows)
}

// kernOr returns the kernels pb was packed for, or def when pb is nil.
func (pb *PackedB) kernOr(def *gemmKernels) *gemmKernels {
	if pb == nil {
		return def
	}
	return pb.kern
}

// gemmPackedThreads is GemmPacked (C = alpha·A·op(B) + beta·C with alpha =
// 1, m ≥ 1) on at most threads goroutines: bitwise the same result for any
// thread count.
func gemmPackedThreads(threads, m int, a []float32, lda int, pb *PackedB, beta float32, c []float32, ldc int) {
	if pb.n == 0 || pb.k == 0 {
		GemmPacked(m, 1, a, lda, pb, beta, c, ldc)
		return
	}
	checkGemm("tensor.GemmPacked", false, false, m, pb.n, pb.k, len(a), lda, pb.k*pb.n, max(1, pb.n), len(c), ldc)
	g := gemmJob{m: m, n: pb.n, k: pb.k, alpha: 1, beta: beta, a: a, lda: lda, c: c, ldc: ldc, packed: pb}
	if pb.half != nil {
		runBlocked(&g, pb.kern.bf16, threads)
		return
	}
	runBlocked(&g, pb.kern.f32, threads)
}

// xentJob is one cross-entropy call: the operands and the chunk stages.
type xentJob struct {
	op        string
	dy, y     []float32
	targets   []int32
	T, D, V   int
	chunk     int
	gradScale float32
	scratch   []float32
	// logitsOf fills (nc, V) for positions t0..t0+nc on all cores; grad
	// accumulates dy from the gradient rows of the chunk on all cores.
	logitsOf, grad func(l []float32, t0, nc int)
	// slab, when set, runs all three stages for rows t0..t0+nc on the
	// calling goroutine (loss: (nc) per-row losses); a chunk of more than
	// smallMMax rows is then cut into slabs of multiples of slabRows, one
	// per core.
	slab     func(l []float32, t0, nc int, loss []float64)
	slabRows int
}

// xentWorkPerCore is the multiply-adds (nc·V·D) below which a chunk is
// not split over cores by rows.
const xentWorkPerCore = 1 << 21

// xentLossPool holds per-row loss buffers ((chunk) float64s).
var xentLossPool = sync.Pool{New: func() any { return new([]float64) }}

// softmaxRows turns rows r0..r1 of the chunk's logits l (rows of positions
// t0..) into gradScale·(softmax − onehot) (when dy is set) and stores
// each row's loss, lse − z_target, in loss[r].
func (x *xentJob) softmaxRows(l []float32, t0, r0, r1 int, loss []float64) {
	V := x.V
	for r := r0; r < r1; r++ {
		tgt := int(x.targets[t0+r])
		row := l[r*V : (r+1)*V]
		zt := row[tgt]
		mx := maxOf(row)
		se := expSubSum(row, row, mx) // row becomes e^(z−mx)
		loss[r] = float64(mx) + math.Log(se) - float64(zt)
		if x.dy != nil {
			// row becomes gradScale·(softmax − onehot)
			scaleBy(row, float32(float64(x.gradScale)/se))
			row[tgt] -= x.gradScale
		}
	}
}

// run is the chunk loop shared by both entry points. The loss is summed
// over the rows of a chunk in order and then over chunks, whatever the
// split over cores, so that every schedule gives the same bits.
func (x *xentJob) run() (lossSum float64, count int) {
	op, T, D, V, chunk, targets := x.op, x.T, x.D, x.V, x.chunk, x.targets
	if chunk < 1 || len(x.scratch) < chunk*V {
		panic(op + ": scratch must hold chunk·V floats, chunk >= 1")
	}
	if len(x.y) < T*D || len(targets) < T || (x.dy != nil && len(x.dy) < T*D) {
		panic(op + ": y, wPred, targets or dy too short")
	}
	for _, tg := range targets[:T] {
		if int(tg) >= V {
			panic(op + ": target out of range")
		}
	}
	lp := xentLossPool.Get().(*[]float64)
	defer xentLossPool.Put(lp)
	if cap(*lp) < chunk {
		*lp = make([]float64, chunk)
	}
	loss := (*lp)[:chunk]
	procs := max(1, runtime.GOMAXPROCS(0))
	for t0 := 0; t0 < T; {
		if targets[t0] < 0 {
			t0++
			continue
		}
		t1 := t0 + 1
		for t1 < T && t1-t0 < chunk && targets[t1] >= 0 {
			t1++
		}
		nc := t1 - t0
		logits := x.scratch[:nc*V]
		if x.slab != nil && nc > smallMMax {
			x.slabs(logits, t0, nc, procs, loss)
		} else {
			x.stages(logits, t0, nc, procs, loss)
		}
		for _, v := range loss[:nc] {
			lossSum += v
		}
		count += nc
		t0 = t1
	}
	return lossSum, count
}

// slabs runs the chunk of positions t0..t0+nc as slabs of rows, one per
// goroutine, each through all three stages.
func (x *xentJob) slabs(logits []float32, t0, nc, procs int, loss []float64) {
	mr := max(1, x.slabRows)
	w := min(procs, (nc+mr-1)/mr, max(1, int(int64(nc)*int64(x.V)*int64(x.D)/xentWorkPerCore)))
	per := roundUp((nc+w-1)/w, mr)
	var wg sync.WaitGroup
	for r0 := per; r0 < nc; r0 += per {
		r1 := min(r0+per, nc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			x.slab(logits[r0*x.V:r1*x.V], t0+r0, r1-r0, loss[r0:r1])
		}()
	}
	r1 := min(per, nc)
	x.slab(logits[:r1*x.V], t0, r1, loss[:r1])
	wg.Wait()
}

// stages runs the chunk of positions t0..t0+nc stage by stage: the
// logits GEMM on all cores, the softmax rows spread over cores, the dy
// GEMM on all cores.
func (x *xentJob) stages(logits []float32, t0, nc, procs int, loss []float64) {
	x.logitsOf(logits, t0, nc)
	w := min(procs, nc)
	if int64(nc)*int64(x.V) < 1<<15 {
		w = 1
	}
	if w == 1 {
		x.softmaxRows(logits, t0, 0, nc, loss)
	} else {
		var wg sync.WaitGroup
		step := (nc + w - 1) / w
		for r0 := step; r0 < nc; r0 += step {
			wg.Add(1)
			go func() { defer wg.Done(); x.softmaxRows(logits, t0, r0, min(nc, r0+step), loss) }()
		}
		x.softmaxRows(logits, t0, 0, min(nc, step), loss)
		wg.Wait()
	}
	if x.dy != nil {
		x.grad(logits, t0, nc)
	}
}
