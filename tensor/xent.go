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
	return crossEntropy("tensor.CrossEntropyLMHead", dy, y, targets, T, D, V, chunk, gradScale, scratch, logits, grad)
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
// order. The packings must be of wPred (not checked beyond their shapes).
func CrossEntropyLMHeadPacked(dy, y, wPred []float32, wt, w *PackedB, targets []int32, T, chunk int, gradScale float32, scratch []float32) (lossSum float64, count int) {
	V, D := wt.N(), wt.K()
	if len(wPred) < V*D {
		panic("tensor.CrossEntropyLMHeadPacked: wPred too short")
	}
	if dy != nil && (w == nil || w.N() != D || w.K() != V) {
		panic(fmt.Sprintf("tensor.CrossEntropyLMHeadPacked: w must be W_pred packed (k=%d, n=%d) when dy is set", V, D))
	}
	logits := func(l []float32, t0, nc int) {
		if nc <= smallMMax { // Gemm's dot-product path, as CrossEntropyLMHead takes
			Gemm(false, true, nc, V, D, 1, y[t0*D:], D, wPred, D, 0, l, V)
			return
		}
		GemmPacked(nc, 1, y[t0*D:], D, wt, 0, l, V)
	}
	grad := func(l []float32, t0, nc int) {
		GemmPacked(nc, 1, l, V, w, 1, dy[t0*D:], D)
	}
	return crossEntropy("tensor.CrossEntropyLMHeadPacked", dy, y, targets, T, D, V, chunk, gradScale, scratch, logits, grad)
}

// crossEntropy is the chunk loop shared by both entry points: logits fills
// (nc, V) for positions t0..t0+nc, grad accumulates dy from the gradient
// rows of the chunk.
func crossEntropy(op string, dy, y []float32, targets []int32, T, D, V, chunk int, gradScale float32, scratch []float32,
	logitsOf, grad func(l []float32, t0, nc int)) (lossSum float64, count int) {
	if chunk < 1 || len(scratch) < chunk*V {
		panic(op + ": scratch must hold chunk·V floats, chunk >= 1")
	}
	if len(y) < T*D || len(targets) < T || (dy != nil && len(dy) < T*D) {
		panic(op + ": y, wPred, targets or dy too short")
	}
	for _, tg := range targets[:T] {
		if int(tg) >= V {
			panic(op + ": target out of range")
		}
	}
	workers := max(1, runtime.GOMAXPROCS(0))
	partial := make([]float64, workers)
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
		logits := scratch[:nc*V]
		logitsOf(logits, t0, nc)
		w := min(workers, nc)
		if int64(nc)*int64(V) < 1<<15 {
			w = 1
		}
		rows := func(wi, r0, r1 int) {
			var sum float64
			for r := r0; r < r1; r++ {
				tgt := int(targets[t0+r])
				row := logits[r*V : (r+1)*V]
				zt := row[tgt]
				mx := maxOf(row)
				se := expSubSum(row, row, mx) // row becomes e^(z−mx)
				lse := float64(mx) + math.Log(se)
				sum += lse - float64(zt)
				if dy != nil {
					// row becomes gradScale·(softmax − onehot)
					scaleBy(row, float32(float64(gradScale)/se))
					row[tgt] -= gradScale
				}
			}
			partial[wi] = sum
		}
		if w == 1 {
			rows(0, 0, nc)
		} else {
			var wg sync.WaitGroup
			step := (nc + w - 1) / w
			for wi := 0; wi*step < nc; wi++ {
				wg.Add(1)
				go func() { defer wg.Done(); rows(wi, wi*step, min(nc, (wi+1)*step)) }()
			}
			wg.Wait()
		}
		for wi := range w {
			lossSum += partial[wi]
			partial[wi] = 0
		}
		count += nc
		if dy != nil {
			grad(logits, t0, nc)
		}
		t0 = t1
	}
	return lossSum, count
}
