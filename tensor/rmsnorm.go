package tensor

import "math"

// RMSNormForward computes out = x / rms(x) · w per row.
//
//	out:  (n, d)
//	rstd: (n) saved for backward (1/rms); may be nil at inference
//	x:    (n, d)
//	w:    (d)
func RMSNormForward(out, rstd, x, w []float32, n, d int, eps float32) {
	if !chunked(n, d) {
		rmsNormRows(out, rstd, x, w, 0, n, d, eps)
		return
	}
	forChunks(n, d, func(i0, i1 int) { rmsNormRows(out, rstd, x, w, i0, i1, d, eps) })
}

// rmsNormRows is RMSNormForward on rows [i0, i1).
func rmsNormRows(out, rstd, x, w []float32, i0, i1, d int, eps float32) {
	for i := i0; i < i1; i++ {
		xr := x[i*d : (i+1)*d]
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		r := float32(1 / math.Sqrt(ss/float64(d)+float64(eps)))
		if rstd != nil {
			rstd[i] = r
		}
		or := out[i*d : (i+1)*d]
		for j, v := range xr {
			or[j] = v * r * w[j]
		}
	}
}

// RMSNormBackward accumulates the gradients of RMSNormForward, given the
// rstd it saved. With r = rstd[i] and g = dout ⊙ w for one row:
// dx = r·g − r³/d · x · Σ(g ⊙ x), dw += dout ⊙ x · r.
//
//	dx:   (n, d) += …, or nil
//	dw:   (d) += …, or nil
//	dout: (n, d)
//	x:    (n, d)
//	w:    (d)
//	rstd: (n)
func RMSNormBackward(dx, dw, dout, x, w, rstd []float32, n, d int) {
	for i := 0; i < n; i++ {
		xr := x[i*d : (i+1)*d]
		gr := dout[i*d : (i+1)*d]
		r := rstd[i]
		if dw != nil {
			dwr := dw[:d]
			for j, g := range gr {
				dwr[j] += g * xr[j] * r
			}
		}
		if dx != nil {
			var dot float64
			for j, g := range gr {
				dot += float64(g * w[j] * xr[j])
			}
			c := float32(dot) * r * r * r / float32(d)
			dxr := dx[i*d : (i+1)*d]
			for j, g := range gr {
				dxr[j] += r*g*w[j] - c*xr[j]
			}
		}
	}
}
