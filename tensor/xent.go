package tensor

import (
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
// softmax is max-subtracted with sums of exp in float64. The logit GEMMs
// run through Gemm (all cores); the per-row softmax is spread over cores.
func CrossEntropyLMHead(dy, y, wPred []float32, targets []int32, T, D, V, chunk int, gradScale float32, scratch []float32) (lossSum float64, count int) {
	if chunk < 1 || len(scratch) < chunk*V {
		panic("tensor.CrossEntropyLMHead: scratch must hold chunk·V floats, chunk >= 1")
	}
	if len(y) < T*D || len(wPred) < V*D || len(targets) < T || (dy != nil && len(dy) < T*D) {
		panic("tensor.CrossEntropyLMHead: y, wPred, targets or dy too short")
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
		// logits: (nc, V) = y[t0:t1] · wPredᵀ
		Gemm(false, true, nc, V, D, 1, y[t0*D:], D, wPred, D, 0, logits, V)
		w := min(workers, nc)
		if int64(nc)*int64(V) < 1<<15 {
			w = 1
		}
		rows := func(wi, r0, r1 int) {
			var sum float64
			for r := r0; r < r1; r++ {
				tgt := int(targets[t0+r])
				if tgt >= V {
					panic("tensor.CrossEntropyLMHead: target out of range")
				}
				row := logits[r*V : (r+1)*V]
				mx := row[0]
				for _, z := range row {
					mx = max(mx, z)
				}
				var se float64
				for _, z := range row {
					se += math.Exp(float64(z - mx))
				}
				lse := float64(mx) + math.Log(se)
				sum += lse - float64(row[tgt])
				if dy != nil {
					// row becomes gradScale·(softmax − onehot)
					for j, z := range row {
						row[j] = gradScale * float32(math.Exp(float64(z)-lse))
					}
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
			// dy[t0:t1] += dlogits · wPred
			Gemm(false, false, nc, D, V, 1, logits, V, wPred, D, 1, dy[t0*D:], D)
		}
		t0 = t1
	}
	return lossSum, count
}
