package tensor

import "math"

// SoftmaxForward computes a numerically stable softmax of each row
// (max-subtracted, sum in float64); out may alias x.
//
//	out, x: (n, d)
func SoftmaxForward(out, x []float32, n, d int) {
	for i := 0; i < n; i++ {
		xr := x[i*d : (i+1)*d]
		or := out[i*d : (i+1)*d]
		maxv := float32(math.Inf(-1))
		for _, v := range xr {
			maxv = max(maxv, v)
		}
		var sum float64
		for j, v := range xr {
			e := math.Exp(float64(v - maxv))
			or[j] = float32(e)
			sum += e
		}
		inv := float32(1 / sum)
		for j := range or {
			or[j] *= inv
		}
	}
}

// SoftmaxBackward accumulates the gradient of SoftmaxForward from its
// output: dx += out ⊙ (dout − Σ dout ⊙ out), per row.
//
//	dx, dout, out: (n, d)
func SoftmaxBackward(dx, dout, out []float32, n, d int) {
	for i := 0; i < n; i++ {
		gr := dout[i*d : (i+1)*d]
		or := out[i*d : (i+1)*d]
		var dot float64
		for j, g := range gr {
			dot += float64(g * or[j])
		}
		dt := float32(dot)
		dxr := dx[i*d : (i+1)*d]
		for j, g := range gr {
			dxr[j] += or[j] * (g - dt)
		}
	}
}

// LogSumExp is log Σ_i exp(x_i), computed stably: the max m in float32, the
// sum of exp(x_i − m) in float64. x must not be empty. Next-token loss of a
// row of logits is LogSumExp(row) − row[target].
func LogSumExp(x []float32) float64 {
	mx := x[0]
	for _, z := range x {
		mx = max(mx, z)
	}
	var se float64
	for _, z := range x {
		se += math.Exp(float64(z - mx))
	}
	return float64(mx) + math.Log(se)
}
