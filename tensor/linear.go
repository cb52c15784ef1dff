package tensor

// LinearForward computes out = inp·Wᵀ + bias (PyTorch nn.Linear layout).
//
//	out:  (n, oc)
//	inp:  (n, ic)
//	w:    (oc, ic)
//	bias: (oc) or nil
func LinearForward(out, inp, w, bias []float32, n, ic, oc int) {
	Gemm(false, true, n, oc, ic, 1, inp, ic, w, ic, 0, out, oc)
	if bias != nil {
		for i := 0; i < n; i++ {
			row := out[i*oc : (i+1)*oc]
			for j, b := range bias[:oc] {
				row[j] += b
			}
		}
	}
}

// LinearBackward accumulates the gradients of LinearForward.
//
//	dinp:  (n, ic) += dout·W, or nil
//	dw:    (oc, ic) += doutᵀ·inp, or nil
//	dbias: (oc) += column sums of dout, or nil
//	dout:  (n, oc)
//	inp:   (n, ic)
//	w:     (oc, ic)
func LinearBackward(dinp, dw, dbias, dout, inp, w []float32, n, ic, oc int) {
	if dinp != nil {
		Gemm(false, false, n, ic, oc, 1, dout, oc, w, ic, 1, dinp, ic)
	}
	if dw != nil {
		Gemm(true, false, oc, ic, n, 1, dout, oc, inp, ic, 1, dw, ic)
	}
	if dbias != nil {
		db := dbias[:oc]
		for i := 0; i < n; i++ {
			for j, g := range dout[i*oc : (i+1)*oc] {
				db[j] += g
			}
		}
	}
}
