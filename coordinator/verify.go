package coordinator

import (
	"errors"
	"fmt"
	"math"

	"carryon/tensor"
)

// Verification of volunteers' work (docs/method.md, Verification).
//
// A sampled chunk is computed by two different nodes and the two bridged
// results are compared after dequantization, token by token (one row of
// one layer of one sequence at a time). Two honest nodes on different
// kernels see hidden states h1, h2 that differ, before quantization, by
// float error: we allow |h1_i - h2_i| <= δ_i = κ·(|x_i| + rms(x)), with
// κ = Config.VerifyKernelRel (default 1e-3; CPU vs GPU float32 differ by
// about 1e-5). Quantizing each side then adds at most the codec's error
// bound b_i (tensor.Codec.ErrorBound, evaluated on each decoded row), so
// the honest difference of the decoded values is bounded per element by
//
//	(1)  |a_i - b_i| <= step_i + 2·δ_i,    step_i = bA_i + bB_i
//
// where step_i is one quantization level: a kernel difference may flip
// the rounding of an element by one level, never by two. Flips are rare:
// element i flips with probability about δ_i/step_i, so the expected
// squared difference of a row is
//
//	E = Σ_i min(step_i², δ_i·step_i) + δ_i²
//
// and the row must satisfy
//
//	(2)  relL2 = ||a - b|| / max(||a||, ||b||) <= R,
//	     R = sqrt(4·(E + 2·max_i step_i²)) / max(||a||, ||b||)
//	(3)  cos(a, b) >= sqrt(1 - min(R², 1))
//
// The factor 4 (2× in L2) and the two free level flips per row absorb
// the variance of the flip count; (3) is what (2) implies for vectors of
// equal norm, so it only matters when the norms differ (a rescaled row).
// A row failing (1), (2) or (3) is a disagreement. At q8 and d = 128, R is
// about 1.5% of the row's norm at κ = 1e-3 (a node perturbing its output
// by 5% is caught on every row); at q4 it is about 12%; bf16 about 0.8%.
// q1 (sign) bounds are as wide as the values: it verifies little.

// verifyStats summarises one comparison.
type verifyStats struct {
	Rows       int     // token rows compared
	BadRows    int     // rows failing (1), (2) or (3)
	WorstRatio float64 // max over rows of relL2 / R
	MinCos     float64 // min over rows of cos(a, b)
	Flips      int     // elements differing by more than half a level
}

// agree reports whether the two results are the same computation.
func (s verifyStats) agree() bool { return s.BadRows == 0 }

func (s verifyStats) String() string {
	return fmt.Sprintf("%d/%d rows disagree, worst relL2/R %.3g, min cos %.6f, %d level flips",
		s.BadRows, s.Rows, s.WorstRatio, s.MinCos, s.Flips)
}

// errMismatch marks results of different shapes: a protocol-valid result
// that cannot be the same computation.
var errMismatch = errors.New("results differ in shape")

// compareEntries compares two results of one chunk, indexed [layer][seq],
// by the rule above.
func compareEntries(codec tensor.Codec, kappa float64, a, b [][]Entry) (verifyStats, error) {
	st := verifyStats{MinCos: 1}
	if len(a) != len(b) {
		return st, fmt.Errorf("%w: %d vs %d layers", errMismatch, len(a), len(b))
	}
	var xa, xb []float32
	for li := range a {
		if len(a[li]) != len(b[li]) {
			return st, fmt.Errorf("%w: layer %d: %d vs %d sequences", errMismatch, li, len(a[li]), len(b[li]))
		}
		for si := range a[li] {
			ea, eb := a[li][si], b[li][si]
			if ea.Rows != eb.Rows || ea.Dim != eb.Dim {
				return st, fmt.Errorf("%w: layer %d sequence %d: %d×%d vs %d×%d", errMismatch, li, si, ea.Rows, ea.Dim, eb.Rows, eb.Dim)
			}
			n := ea.Rows * ea.Dim
			if cap(xa) < n {
				xa, xb = make([]float32, n), make([]float32, n)
			}
			xa, xb = xa[:n], xb[:n]
			if err := codec.Decode(xa, ea.Data, ea.Rows, ea.Dim); err != nil {
				return st, fmt.Errorf("decode first: %w", err)
			}
			if err := codec.Decode(xb, eb.Data, eb.Rows, eb.Dim); err != nil {
				return st, fmt.Errorf("decode second: %w", err)
			}
			ba, bb := codec.ErrorBound(xa, ea.Dim), codec.ErrorBound(xb, eb.Dim)
			for r := 0; r < ea.Rows; r++ {
				o := r * ea.Dim
				st.add(compareRow(kappa, xa[o:o+ea.Dim], xb[o:o+ea.Dim], ba[o:o+ea.Dim], bb[o:o+ea.Dim]))
			}
		}
	}
	return st, nil
}

// rowResult is the comparison of one token row.
type rowResult struct {
	ok    bool
	ratio float64 // relL2 / R
	cos   float64
	flips int
}

func (s *verifyStats) add(r rowResult) {
	s.Rows++
	if !r.ok {
		s.BadRows++
	}
	s.WorstRatio = max(s.WorstRatio, r.ratio)
	s.MinCos = min(s.MinCos, r.cos)
	s.Flips += r.flips
}

// compareRow applies (1)-(3) to one row: a, b the decoded values, ea, eb
// the codec's per-element error bounds on each side.
func compareRow(kappa float64, a, b, ea, eb []float32) rowResult {
	var na, nb, dot, diff2 float64
	for i := range a {
		x, y := float64(a[i]), float64(b[i])
		na += x * x
		nb += y * y
		dot += x * y
		diff2 += (x - y) * (x - y)
	}
	rms := math.Sqrt(max(na, nb) / float64(len(a)))
	var expect, maxStep2 float64
	res := rowResult{ok: true}
	for i := range a {
		x, y := float64(a[i]), float64(b[i])
		// The bounds are evaluated on decoded values, whose group maximum
		// can sit one bound below the original's: widen them by 2^-10.
		step := (float64(ea[i]) + float64(eb[i])) * (1 + 0x1p-10)
		delta := kappa * (max(math.Abs(x), math.Abs(y)) + rms)
		d := math.Abs(x - y)
		if d > step+2*delta+1e-30 { // (1): more than one level apart
			res.ok = false
		}
		if d > step/2 {
			res.flips++
		}
		expect += min(step*step, delta*step) + delta*delta
		maxStep2 = max(maxStep2, step*step)
	}
	norm := math.Sqrt(max(na, nb))
	if norm == 0 {
		res.cos = 1
		return res // both rows are zero: (1) already compared every element
	}
	bound := math.Sqrt(4*(expect+2*maxStep2)) / norm
	relL2 := math.Sqrt(diff2) / norm
	res.ratio = relL2 / bound
	if na == 0 || nb == 0 {
		res.cos = 0
	} else {
		res.cos = dot / math.Sqrt(na*nb)
	}
	if relL2 > bound || res.cos < math.Sqrt(1-min(bound*bound, 1)) {
		res.ok = false
	}
	return res
}

// samplingRate is the probability that a node's finished chunk is
// verified (BOINC's adaptive replication): a new node is sampled at twice
// the base rate f, the rate falls as 2f·trustAfter/(trustAfter + clean)
// with its run of clean verifications, never below f/4; a node that was
// once on the losing side of a comparison (or whose result could not be
// settled) is sampled at 4f until it has earned trust again.
func samplingRate(f float64, clean int, suspect bool) float64 {
	if f <= 0 {
		return 0
	}
	const trustAfter = 10
	p := 2 * f * trustAfter / float64(trustAfter+clean)
	if suspect {
		p = max(p, 4*f)
	}
	return min(1, max(p, f/4))
}
