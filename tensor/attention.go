package tensor

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"
)

// Block sizes of the fused attention kernels: a block of attnBlockQ query
// rows is swept over blocks of attnBlockK keys, so a block of K and V rows
// stays in cache while the query rows stream past it. Variables so that
// tests can shrink them below T. 128 × 128 packs each operand half as
// often as 64 × 64 (Q and P once per key block, K and V once per query
// block): at T 512, 14 heads × 64 (Qwen2.5-0.5B) it ran 10–23% more tokens
// per CPU-second forward and 20–25% backward, for 164 KB of scratch per
// worker.
var (
	attnBlockQ = 128
	attnBlockK = 128
)

// attnParallelWork is the T·T·hd·nHead above which the kernels fan out
// across goroutines.
const attnParallelWork = 1 << 18

// attnSlot is the scratch one worker needs: two score blocks (bq, bk) (S or
// P, and dP/dS in the backward), the unnormalised output rows (bq, hd), and
// per row the running max and sum (forward) or D_t (backward).
func attnSlot(T, hd int) int {
	bq, bk := min(attnBlockQ, max(T, 1)), min(attnBlockK, max(T, 1))
	return 2*bq*bk + bq*hd + 2*bq
}

// AttentionScratch returns the number of float32s of scratch that
// AttentionForward and AttentionBackward need to run on all cores
// (GOMAXPROCS at the time of the call). It grows with hd and the core count,
// never with T². A smaller scratch of at least one worker's share still
// works, on fewer goroutines.
func AttentionScratch(T, hd int) int {
	return attnSlot(T, hd) * max(1, runtime.GOMAXPROCS(0))
}

// attnWorkers returns how many goroutines may run given the scratch, the
// number of independent work items and the size of the problem.
func attnWorkers(scratch []float32, slot, items int, work int64) int {
	w := len(scratch) / slot
	if w < 1 {
		panic("tensor: attention scratch too small (use AttentionScratch)")
	}
	w = min(w, items, runtime.GOMAXPROCS(0))
	if work < attnParallelWork {
		w = 1
	}
	return w
}

// runItems runs fn(slot, item) for item in [0, items) on w goroutines (the
// caller is slot 0), handing out items in order through an atomic counter:
// a worker that is descheduled (a busy machine) leaves its share to the
// others instead of holding everyone at the end.
func runItems(w, items int, fn func(slot, item int)) {
	if w <= 1 {
		for it := 0; it < items; it++ {
			fn(0, it)
		}
		return
	}
	var next atomic.Int64
	work := func(s int) {
		for {
			it := int(next.Add(1) - 1)
			if it >= items {
				return
			}
			fn(s, it)
		}
	}
	var wg sync.WaitGroup
	for s := 1; s < w; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work(s)
		}()
	}
	work(0)
	wg.Wait()
}

// splitChunks runs f(j0, j1) over [0, n) cut into runs of per, handed out
// to w goroutines as runItems does.
func splitChunks(n, per, w int, f func(j0, j1 int)) {
	runItems(w, (n+per-1)/per, func(_, it int) { f(it*per, min(it*per+per, n)) })
}

// AttentionForward computes causal grouped-query attention for one sequence
// as a fused blockwise kernel with an online softmax (FlashAttention-style):
// a block of query rows is swept over blocks of keys, each score block comes
// from Gemm, and no T×T matrix is ever formed.
//
//	out:     (T, nHead·hd)
//	lse:     (nHead, T) log-sum-exp of each (scaled) score row, saved for backward; may be nil
//	q:       (T, nHead·hd)
//	k:       (T, nKV·hd)
//	v:       (T, nKV·hd)
//	scratch: AttentionScratch(T, hd) floats (at least one worker's share)
//
// Query head h reads key/value head h / (nHead/nKV). Scores are scaled by
// 1/sqrt(hd). Row t attends to positions 0..t. Work is spread over
// goroutines by (head, query block) when T·T·hd·nHead is large.
func AttentionForward(out, lse, q, k, v, scratch []float32, T, nHead, nKV, hd int) {
	if T == 0 {
		return
	}
	if nKV <= 0 || nHead%nKV != 0 {
		panic("tensor.AttentionForward: nHead must be a multiple of nKV")
	}
	group := nHead / nKV
	scale := float32(1 / math.Sqrt(float64(hd)))
	qs, ks := nHead*hd, nKV*hd
	bq, bk := min(attnBlockQ, T), min(attnBlockK, T)
	slot := attnSlot(T, hd)
	nqb := (T + bq - 1) / bq
	items := nHead * nqb
	w := attnWorkers(scratch, slot, items, int64(T)*int64(T)*int64(hd)*int64(nHead))
	negInf := float32(math.Inf(-1))
	runItems(w, items, func(sl, it int) {
		sc := scratch[sl*slot : (sl+1)*slot]
		s := sc[:bq*bk]                                // scores, then probabilities: (bq, bk)
		acc := sc[2*bq*bk : 2*bq*bk+bq*hd]             // unnormalised output rows: (bq, hd)
		m := sc[2*bq*bk+bq*hd : 2*bq*bk+bq*hd+bq]      // running max per row
		l := sc[2*bq*bk+bq*hd+bq : 2*bq*bk+bq*hd+2*bq] // running sum per row
		// Items run from the last (longest) query block to the first so the
		// slowest work starts early.
		it = items - 1 - it
		h, i0 := it/nqb, (it%nqb)*bq
		kvh := h / group
		i1 := min(i0+bq, T)
		nr := i1 - i0
		for r := range nr {
			m[r], l[r] = negInf, 0
		}
		clear(acc[:nr*hd])
		qb := q[i0*qs+h*hd:]
		for j0 := 0; j0 < i1; j0 += bk {
			j1 := min(j0+bk, i1)
			nc := j1 - j0
			// s = scale · Q_i · K_jᵀ
			Gemm(false, true, nr, nc, hd, scale, qb, qs, k[j0*ks+kvh*hd:], ks, 0, s, bk)
			for r := range nr {
				row := s[r*bk : r*bk+nc]
				valid := min(nc, i0+r+1-j0) // causal: keys j0..i0+r
				if valid <= 0 {
					clear(row)
					continue
				}
				mx := max(m[r], maxOf(row[:valid]))
				if mx > m[r] {
					corr := expf32(m[r] - mx)
					l[r] *= corr
					a := acc[r*hd : r*hd+hd]
					for x := range a {
						a[x] *= corr
					}
					m[r] = mx
				}
				// row becomes e^(x − mx); its sum is added in float64
				l[r] += float32(expSubSum(row[:valid], row[:valid], mx))
				clear(row[valid:])
			}
			// acc += P · V_j
			Gemm(false, false, nr, hd, nc, 1, s, bk, v[j0*ks+kvh*hd:], ks, 1, acc, hd)
		}
		for r := range nr {
			t := i0 + r
			inv := 1 / l[r]
			o := out[t*qs+h*hd : t*qs+h*hd+hd]
			for x, a := range acc[r*hd : r*hd+hd] {
				o[x] = a * inv
			}
			if lse != nil {
				lse[h*T+t] = m[r] + float32(math.Log(float64(l[r])))
			}
		}
	})
}

// AttentionBackward accumulates the gradients of AttentionForward. It
// recomputes the probabilities blockwise from q, k and the saved lse
// (P = exp(S − lse)), with D_t = Σ dout_t ⊙ out_t per row, so like the
// forward it never holds a T×T matrix; every block product is a Gemm:
//
//	dV_j += P_ijᵀ dO_i;  dS_ij = P_ij ⊙ (dO_i V_jᵀ − D_i)
//	dQ_i += scale · dS_ij K_j;  dK_j += scale · dS_ijᵀ Q_i
//
//	dq:      (T, nHead·hd) += …, or nil
//	dk, dv:  (T, nKV·hd) += …, or nil
//	dout:    (T, nHead·hd)
//	q, out:  (T, nHead·hd)
//	k, v:    (T, nKV·hd)
//	lse:     (nHead, T) from AttentionForward
//	scratch: AttentionScratch(T, hd) floats
//
// Work is partitioned by key/value head: each goroutine owns the dk and dv
// of its KV head and the dq of that head's query group, so there is no
// race. When that leaves cores idle (GOMAXPROCS ≥ 2·nKV, e.g. grouped
// queries with few KV heads) the work is split into two passes instead:
// one over (KV head, key block) items for dk and dv, one over (head, query
// block) items for dq. They recompute P and dS (about 1.4× the products)
// but use every core. Both schedules add every term in the same order, so
// the results are bitwise the same.
func AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scratch []float32, T, nHead, nKV, hd int) {
	if T == 0 || (dq == nil && dk == nil && dv == nil) {
		return
	}
	if nKV <= 0 || nHead%nKV != 0 {
		panic("tensor.AttentionBackward: nHead must be a multiple of nKV")
	}
	ab := attnBack{dq: dq, dk: dk, dv: dv, dout: dout, q: q, k: k, v: v, out: out, lse: lse,
		T: T, nHead: nHead, nKV: nKV, hd: hd, group: nHead / nKV, qs: nHead * hd, ks: nKV * hd,
		scale: float32(1 / math.Sqrt(float64(hd)))}
	ab.bq, ab.bk = min(attnBlockQ, T), min(attnBlockK, T)
	slot := attnSlot(T, hd)
	work := int64(T) * int64(T) * int64(hd) * int64(nHead)
	nqb, nkb := (T+ab.bq-1)/ab.bq, (T+ab.bk-1)/ab.bk
	if split := attnWorkers(scratch, slot, nHead*nqb, work); split >= 2*nKV {
		if dk != nil || dv != nil {
			w := attnWorkers(scratch, slot, nKV*nkb, work)
			runItems(w, nKV*nkb, func(sl, it int) {
				// the last key blocks have the fewest queries: run them last
				ab.keyBlock(scratch[sl*slot:(sl+1)*slot], it/nkb, (it%nkb)*ab.bk)
			})
		}
		if dq != nil {
			runItems(split, nHead*nqb, func(sl, it int) {
				it = nHead*nqb - 1 - it // longest query blocks first
				ab.queryBlock(scratch[sl*slot:(sl+1)*slot], it/nqb, (it%nqb)*ab.bq)
			})
		}
		return
	}
	w := attnWorkers(scratch, slot, nKV, work)
	runItems(w, nKV, func(sl, kvh int) {
		sc := scratch[sl*slot : (sl+1)*slot]
		for h := kvh * ab.group; h < (kvh+1)*ab.group; h++ {
			for i0 := 0; i0 < T; i0 += ab.bq {
				nr := min(i0+ab.bq, T) - i0
				ab.rowDots(sc, h, i0, nr)
				for j0 := 0; j0 < i0+nr; j0 += ab.bk {
					ab.pair(sc, h, i0, nr, j0, true, true)
				}
			}
		}
	})
}

// attnBack holds the operands of one AttentionBackward call.
type attnBack struct {
	dq, dk, dv, dout, q, k, v, out, lse []float32
	T, nHead, nKV, hd, group, qs, ks    int
	bq, bk                              int
	scale                               float32
}

// rowDots sets D_t = Σ dout_t ⊙ out_t for the query rows i0..i0+nr of head
// h into the slot's D area.
func (ab *attnBack) rowDots(sc []float32, h, i0, nr int) {
	dd := sc[2*ab.bq*ab.bk : 2*ab.bq*ab.bk+ab.bq]
	for t := i0; t < i0+nr; t++ {
		o := t*ab.qs + h*ab.hd
		var d float32
		for x, g := range ab.dout[o : o+ab.hd] {
			d += g * ab.out[o+x]
		}
		dd[t-i0] = d
	}
}

// pair processes query block (h, i0..i0+nr) against key block j0: it
// recomputes P and dS and adds the block's terms to dv and dk (when kv)
// and dq (when wantQ). rowDots must have filled D for the query block.
func (ab *attnBack) pair(sc []float32, h, i0, nr, j0 int, kv, wantQ bool) {
	bq, bk, hd, qs, ks := ab.bq, ab.bk, ab.hd, ab.qs, ab.ks
	kvh := h / ab.group
	p := sc[:bq*bk]                // probabilities: (bq, bk)
	ds := sc[bq*bk : 2*bq*bk]      // dP, then dS: (bq, bk)
	dd := sc[2*bq*bk : 2*bq*bk+bq] // D_t of the query block
	nc := min(j0+bk, i0+nr) - j0
	qb, gb := ab.q[i0*qs+h*hd:], ab.dout[i0*qs+h*hd:]
	kb, vb := ab.k[j0*ks+kvh*hd:], ab.v[j0*ks+kvh*hd:]
	// p = exp(scale · Q_i K_jᵀ − lse), causally masked
	Gemm(false, true, nr, nc, hd, ab.scale, qb, qs, kb, ks, 0, p, bk)
	for r := range nr {
		row := p[r*bk : r*bk+nc]
		valid := max(0, min(nc, i0+r+1-j0))
		expSubSum(row[:valid], row[:valid], ab.lse[h*ab.T+i0+r])
		clear(row[valid:])
	}
	if kv && ab.dv != nil {
		Gemm(true, false, nc, hd, nr, 1, p, bk, gb, qs, 1, ab.dv[j0*ks+kvh*hd:], ks)
	}
	wantK := kv && ab.dk != nil
	wantQ = wantQ && ab.dq != nil
	if !wantQ && !wantK {
		return
	}
	// ds = p ⊙ (dO_i V_jᵀ − D)
	Gemm(false, true, nr, nc, hd, 1, gb, qs, vb, ks, 0, ds, bk)
	for r := range nr {
		pr, dr := p[r*bk:r*bk+nc], ds[r*bk:r*bk+nc]
		d := dd[r]
		for j, x := range pr {
			dr[j] = x * (dr[j] - d)
		}
	}
	if wantQ {
		Gemm(false, false, nr, hd, nc, ab.scale, ds, bk, kb, ks, 1, ab.dq[i0*qs+h*hd:], qs)
	}
	if wantK {
		Gemm(true, false, nc, hd, nr, ab.scale, ds, bk, qb, qs, 1, ab.dk[j0*ks+kvh*hd:], ks)
	}
}

// keyBlock adds to dk and dv of KV head kvh, key rows j0..j0+bk, every
// term, in the order of the fused schedule: heads of the group, then query
// blocks from the first that sees the keys.
func (ab *attnBack) keyBlock(sc []float32, kvh, j0 int) {
	for h := kvh * ab.group; h < (kvh+1)*ab.group; h++ {
		for i0 := j0 / ab.bq * ab.bq; i0 < ab.T; i0 += ab.bq {
			nr := min(i0+ab.bq, ab.T) - i0 // i0+nr > j0: the block sees key j0
			ab.rowDots(sc, h, i0, nr)
			ab.pair(sc, h, i0, nr, j0, true, false)
		}
	}
}

// queryBlock adds to dq of head h, query rows i0..i0+bq, the terms of every
// key block in order.
func (ab *attnBack) queryBlock(sc []float32, h, i0 int) {
	nr := min(i0+ab.bq, ab.T) - i0
	ab.rowDots(sc, h, i0, nr)
	for j0 := 0; j0 < i0+nr; j0 += ab.bk {
		ab.pair(sc, h, i0, nr, j0, false, true)
	}
}

// expf32 is a float32 e^x (Cephes expf: range reduction by ln 2 and a
// degree-6 polynomial), within about 2 ulp of the rounded exact value; it
// is several times cheaper than math.Exp, which dominated the attention
// kernels. Below −87.3 (including −Inf) it returns 0, above 88.7 +Inf.
func expf32(x float32) float32 {
	const (
		log2e = 1.44269504088896341
		ln2hi = 0.693359375
		ln2lo = -2.12194440e-4
	)
	if x < -87.33654 || x != x {
		if x != x {
			return x
		}
		return 0
	}
	if x > 88.72283 {
		return float32(math.Inf(1))
	}
	t := x * log2e
	var ni int32 // round(t), half away from zero
	if t < 0 {
		ni = int32(t - 0.5)
	} else {
		ni = int32(t + 0.5)
	}
	n := float32(ni)
	r := x - n*ln2hi - n*ln2lo
	z := r * r
	y := ((((1.9875691500e-4*r+1.3981999507e-3)*r+8.3334519073e-3)*r+4.1665795894e-2)*r+1.6666665459e-1)*r + 5.0000001201e-1
	y = y*z + r + 1
	// y·2ⁿ, in two steps so that n = 128 or n = −126.. stay representable.
	h := ni / 2
	return y * math.Float32frombits(uint32(h+127)<<23) * math.Float32frombits(uint32(ni-h+127)<<23)
}

// CachedAttentionRows is how many query rows CachedAttention scores at once, which
// bounds its scores buffer to CachedAttentionRows·positions floats.
const CachedAttentionRows = 64

// CachedAttention is causal attention of T new queries at positions
// start..start+T-1 over the cached keys and values of positions
// 0..start+T-1. scores must hold min(T, CachedAttentionRows)·(start+T) floats.
//
//	out: (T, nHead·hd)
//	q:   (T, nHead·hd), after RoPE
//	kc:  (≥ start+T, nKV·hd) keys after RoPE, row-major
//	vc:  (≥ start+T, nKV·hd)
func CachedAttention(out, q, kc, vc, scores []float32, start, T, nHead, nKV, hd int) {
	group := nHead / nKV
	qd, kvd := nHead*hd, nKV*hd
	scale := float32(1 / math.Sqrt(float64(hd)))
	for h := 0; h < nHead; h++ {
		kvh := h / group
		for r0 := 0; r0 < T; r0 += CachedAttentionRows {
			r1 := min(r0+CachedAttentionRows, T)
			nr, P := r1-r0, start+r1 // keys the block's last row sees
			s := scores[:nr*P]
			Gemm(false, true, nr, P, hd, scale, q[r0*qd+h*hd:], qd, kc[kvh*hd:], kvd, 0, s, P)
			for r := 0; r < nr; r++ {
				row := s[r*P : (r+1)*P]
				valid := start + r0 + r + 1
				mx := row[0]
				for _, v := range row[:valid] {
					mx = max(mx, v)
				}
				var sum float64
				for j, v := range row[:valid] {
					e := math.Exp(float64(v - mx))
					row[j] = float32(e)
					sum += e
				}
				inv := float32(1 / sum)
				for j := range row[:valid] {
					row[j] *= inv
				}
				clear(row[valid:])
			}
			Gemm(false, false, nr, hd, P, 1, s, P, vc[kvh*hd:], kvd, 0, out[r0*qd+h*hd:], qd)
		}
	}
}

// Grow returns buf resized to n, reallocating only when it is too small.
func Grow(buf []float32, n int) []float32 {
	if cap(buf) < n {
		return make([]float32, n)
	}
	return buf[:n]
}
