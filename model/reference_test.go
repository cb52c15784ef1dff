package model

import "math"

// The float64 building blocks of the tests' reference forwards
// (referenceForward, refBaseLoss), written from the HF modelling code and
// not from this package's kernels.

// refRMSNorm is x·w / sqrt(mean(x²) + eps).
func refRMSNorm[W float32 | float64](x []float64, w []W, eps float64) []float64 {
	var ss float64
	for _, v := range x {
		ss += v * v
	}
	r := 1 / math.Sqrt(ss/float64(len(x))+eps)
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = v * r * float64(w[i])
	}
	return out
}

// refLinear is x·wᵀ + bias for w in nn.Linear layout (outDim, len(x));
// bias may be nil.
func refLinear[W float32 | float64](x []float64, w, bias []W, outDim int) []float64 {
	out := make([]float64, outDim)
	for o := range out {
		for i, v := range x {
			out[o] += v * float64(w[o*len(x)+i])
		}
		if bias != nil {
			out[o] += float64(bias[o])
		}
	}
	return out
}
