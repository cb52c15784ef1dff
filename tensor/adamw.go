package tensor

import "math"

// AdamWStep applies one AdamW update in place with PyTorch's semantics
// (torch.optim.AdamW, amsgrad=False): decoupled weight decay first, then
// the bias-corrected Adam step. step is the 1-based step count t.
//
//	p ← p·(1 − lr·wd)
//	m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//	p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)
//
//	params, grads, m, v: (n); m and v start at zero and persist across steps
func AdamWStep(params, grads, m, v []float32, step int, lr, beta1, beta2, eps, wd float32) {
	if step < 1 {
		panic("tensor.AdamWStep: step must be >= 1")
	}
	if len(grads) != len(params) || len(m) != len(params) || len(v) != len(params) {
		panic("tensor.AdamWStep: params, grads, m and v differ in length")
	}
	b1, b2 := float64(beta1), float64(beta2)
	bc1 := 1 - math.Pow(b1, float64(step))
	bc2 := math.Sqrt(1 - math.Pow(b2, float64(step)))
	stepSize := float64(lr) / bc1
	decay := 1 - float64(lr)*float64(wd)
	for i, g64 := range grads {
		g := float64(g64)
		mi := b1*float64(m[i]) + (1-b1)*g
		vi := b2*float64(v[i]) + (1-b2)*g*g
		m[i], v[i] = float32(mi), float32(vi)
		p := float64(params[i]) * decay
		params[i] = float32(p - stepSize*mi/(math.Sqrt(vi)/bc2+float64(eps)))
	}
}

// GradNorm returns the global L2 norm of all the gradients, summed in
// float64.
func GradNorm(grads ...[]float32) float64 {
	var ss float64
	for _, g := range grads {
		for _, x := range g {
			ss += float64(x) * float64(x)
		}
	}
	return math.Sqrt(ss)
}

// ClipGradNorm scales every gradient in place by maxNorm/(norm+1e-6) when
// the global norm exceeds maxNorm (torch.nn.utils.clip_grad_norm_), and
// returns the norm before clipping. A maxNorm <= 0 clips nothing.
func ClipGradNorm(maxNorm float64, grads ...[]float32) (norm float64) {
	norm = GradNorm(grads...)
	if maxNorm <= 0 {
		return norm
	}
	coef := maxNorm / (norm + 1e-6)
	if coef < 1 {
		c := float32(coef)
		for _, g := range grads {
			Scale(g, c)
		}
	}
	return norm
}

// CosineLR is the learning rate at step: linear warm-up from 0 (at step 0)
// to maxLR (at step warmup), then cosine decay to minLR at step total, and
// minLR after it. Pass AdamW's 1-based step so the first update is not 0.
func CosineLR(step, warmup, total int, maxLR, minLR float32) float32 {
	if step < warmup {
		return maxLR * float32(step) / float32(warmup)
	}
	if step >= total || total <= warmup {
		return minLR
	}
	progress := float64(step-warmup) / float64(total-warmup)
	c := 0.5 * (1 + math.Cos(math.Pi*progress))
	return float32(float64(minLR) + c*float64(maxLR-minLR))
}
