package carryon

import (
	"fmt"
	"math"

	"carryon/tensor"
)

// LossAndGrad runs Forward (with Config.Alpha), the chunked LM-head
// cross-entropy against targets (T; targets[t] is the token after position
// t, -1 = ignore) and the backward pass, ACCUMULATING parameter gradients
// scaled by gradScale into grads (len(Params), laid out like Params).
// wPred: (Vocab, D), frozen and only read; ws keeps it packed across calls
// (see headPack), so it must not change in place while ws is used with it.
// It returns the unscaled loss sum over counted targets and their number.
// Beyond ws it allocates nothing itself (tensor's kernels may use their own
// packing buffers).
func (c *Model) LossAndGrad(ws *Workspace, sources [][]float32, targets []int32, T int, wPred []float32, gradScale float32, grads []float32) (lossSum float64, count int) {
	ws.one[0] = Seq{Sources: sources, Targets: targets, T: T}
	return c.LossAndGradBatch(ws, ws.one[:], wPred, gradScale, grads)
}

// LossAndGradBatch is LossAndGrad over a batch of sequences in one pass
// (ws from NewBatchWorkspace): the position-wise layers run as one matrix
// of ΣT_b rows, so their GEMMs are as tall as the batch and spread well over
// cores, and attention stays within each sequence. The result is that of
// LossAndGrad called on each sequence in turn (the loss and gradient sums
// are added in another order).
func (c *Model) LossAndGradBatch(ws *Workspace, seqs []Seq, wPred []float32, gradScale float32, grads []float32) (lossSum float64, count int) {
	c.coCheckHead("LossAndGrad", wPred)
	return c.lossAndGradBatch(ws, seqs, headRef{f32: wPred}, gradScale, grads)
}

// LossAndGradBatchQuant is LossAndGradBatch with the frozen LM head
// W_pred (Vocab, D) kept in its file's GGML format (F16, BF16, Q8_0,
// Q4_K, Q6_K; e.g. memory-mapped from the base's GGUF): it is never
// expanded to float32; each chunk of the head's logits and input gradient
// decodes blocks of it inside the GEMMs (tensor.CrossEntropyLMHeadQuant).
// The result is that of LossAndGradBatch on the decoded head (bitwise
// when the head's chunks run more than 8 positions).
func (c *Model) LossAndGradBatchQuant(ws *Workspace, seqs []Seq, head tensor.QuantMatrix, gradScale float32, grads []float32) (lossSum float64, count int) {
	c.coCheckQuantHead("LossAndGrad", head)
	return c.lossAndGradBatch(ws, seqs, headRef{q: &head}, gradScale, grads)
}

func (c *Model) lossAndGradBatch(ws *Workspace, seqs []Seq, head headRef, gradScale float32, grads []float32) (lossSum float64, count int) {
	if len(grads) != len(c.Params) {
		panic(fmt.Sprintf("model.Model.LossAndGrad: grads has %d values, want len(Params) = %d", len(grads), len(c.Params)))
	}
	N := c.coBatch("LossAndGrad", ws, seqs, true)
	alpha := c.Config.Alpha
	y := c.forward(ws, N, alpha)
	dy := ws.dy[:N*c.Config.D()]
	clear(dy)
	lossSum, count = c.lmHead(ws, dy, y, N, head, gradScale)
	if len(ws.gradsOf) != len(grads) || &ws.gradsOf[0] != &grads[0] {
		ws.grads, ws.gradsOf = c.Views(grads), grads // bound once per buffer
	}
	c.backward(ws, N, alpha, dy, ws.grads, nil)
	return lossSum, count
}

// LossAndStepQuant is one fused training step with the LM head in its
// file's GGML format: forward, loss, and a backward pass that hands each
// group of tensors to the optimiser as soon as its gradient is complete
// (the head side, then each block from the last, then the input
// projections), so that no gradient buffer of the whole model exists:
// one scratch of ws as large as a block's tensors holds each group's in
// turn (fusedGrads). Gradients are of gradScale·loss; o must not clip
// (Config.ClipNorm = 0: the global norm is known only at the end). With
// float32 moments the parameters end bitwise as after LossAndGradBatchQuant
// and o.Step. It returns the loss sum, the count and the gradient norm.
func (c *Model) LossAndStepQuant(ws *Workspace, seqs []Seq, head tensor.QuantMatrix, gradScale float32, o *Optimizer) (lossSum float64, count int, gradNorm float64) {
	c.coCheckQuantHead("LossAndStep", head)
	if o.model != c {
		panic("model.Model.LossAndStep: the optimiser is not this model's")
	}
	if o.Config.ClipNorm != 0 {
		panic("model.Model.LossAndStep: a fused step cannot clip by the global norm: set OptimConfig.ClipNorm = 0")
	}
	N := c.coBatch("LossAndStep", ws, seqs, true)
	alpha := c.Config.Alpha
	y := c.forward(ws, N, alpha)
	dy := ws.dy[:N*c.Config.D()]
	clear(dy)
	lossSum, count = c.lmHead(ws, dy, y, N, headRef{q: &head}, gradScale)
	g, groups := c.fusedGrads(ws)
	lr := o.LR()
	o.Steps++
	var ss float64
	c.backward(ws, N, alpha, dy, g, func(stage int) {
		for _, ti := range groups[stage] {
			gt := ws.fusedViews[ti]
			for _, v := range gt {
				ss += float64(v) * float64(v)
			}
			o.updateTensor(ti, gt, lr)
			clear(gt)
		}
	})
	return lossSum, count, math.Sqrt(ss)
}

// fusedGrads returns the gradient views of a fused step and the tensor
// indices completed at each backward stage (stage l: block l; Layers: the
// head side but W_Δ; Layers+1: the projections; Layers+2: W_Δ). The
// stages run one after another (the head side, the blocks from the last,
// the projections) and each is updated and cleared before the next
// begins, so all of them share one scratch of ws, as large as the largest
// stage (a block's tensors): the head side's views, every block's, and
// the projections' start at its beginning. Within the head side, W_Δ
// shares W_g's place, being updated before W_g's gradient is computed.
func (c *Model) fusedGrads(ws *Workspace) (Weights, [][]int) {
	cfg := c.Config
	nsrc := len(cfg.Sources)
	if ws.fusedBuf == nil {
		ts := c.tensors
		blockStart, blockLen := ts[2*nsrc].Offset, 0
		if cfg.Layers > 0 {
			blockLen = ts[2*nsrc+9].Offset - blockStart
		}
		hi := 2*nsrc + 9*cfg.Layers // FinalNorm, Delta, Gate, GateBias
		fn, delta, gate, gb := ts[hi], ts[hi+1], ts[hi+2], ts[hi+3]
		projLen := blockStart
		headLen := fn.Numel() + max(delta.Numel(), gate.Numel()+gb.Numel())
		ws.fusedBuf = make([]float32, max(projLen, blockLen, headLen))
		buf := ws.fusedBuf
		ws.fusedViews = make([][]float32, len(ts))
		for ti, t := range ts {
			var off int
			switch {
			case ti < 2*nsrc:
				off = t.Offset
			case ti < hi:
				off = (t.Offset - blockStart) % blockLen
			case ti == hi: // FinalNorm
				off = 0
			case ti == hi+1, ti == hi+2: // Delta, then Gate in the same place
				off = fn.Numel()
			default: // GateBias
				off = fn.Numel() + gate.Numel()
			}
			ws.fusedViews[ti] = buf[off : off+t.Numel() : off+t.Numel()]
		}
		k := 0
		next := func() []float32 { k++; return ws.fusedViews[k-1] }
		w := &ws.fusedW
		for range cfg.Sources {
			w.Proj = append(w.Proj, next())
			w.ProjBias = append(w.ProjBias, next())
		}
		w.Blocks = make([]Block, cfg.Layers)
		for l := range w.Blocks {
			b := &w.Blocks[l]
			b.AttnNorm, b.WQ, b.WK, b.WV, b.WO = next(), next(), next(), next(), next()
			b.MLPNorm, b.WGate, b.WUp, b.WDown = next(), next(), next(), next()
		}
		w.FinalNorm, w.Delta, w.Gate, w.GateBias = next(), next(), next(), next()
		ws.fusedGroups = make([][]int, cfg.Layers+3)
		for l := 0; l < cfg.Layers; l++ {
			for i := 0; i < 9; i++ {
				ws.fusedGroups[l] = append(ws.fusedGroups[l], 2*nsrc+9*l+i)
			}
		}
		ws.fusedGroups[cfg.Layers] = []int{hi, hi + 2, hi + 3}
		for ti := 0; ti < 2*nsrc; ti++ {
			ws.fusedGroups[cfg.Layers+1] = append(ws.fusedGroups[cfg.Layers+1], ti)
		}
		ws.fusedGroups[cfg.Layers+2] = []int{hi + 1}
	}
	return ws.fusedW, ws.fusedGroups
}

// backward propagates dy (N, D) = ∂loss/∂y through the activations saved
// in ws by the last forward (of the batch ws.seqs, N rows), accumulating
// into g. It calls the tensor backwards in the reverse order of forward.
// done, when set, is called once the gradients of a group of tensors are
// complete (see fusedGrads): Layers+2 (W_Δ), Layers (the rest of the head
// side), then each block l from the last, then Layers+1 (the input
// projections).
func (c *Model) backward(ws *Workspace, N int, alpha float32, dy []float32, g Weights, done func(stage int)) {
	cfg := c.Config
	W, D := cfg.Width, cfg.D()
	NW, ND := N*W, N*D

	// y = x̂ + α·g⊙Δx: dΔx = α·dy⊙g, dg = α·dy⊙Δx (x̂ is a frozen input)
	dA, dDelta, dGate := ws.dtmp[:ND], ws.dDelta[:ND], ws.dGate[:ND]
	for i, v := range dy {
		dA[i] = alpha * v
	}
	clear(dDelta)
	clear(dGate)
	tensor.MulBackward(dGate, dDelta, dA, ws.gate[:ND], ws.delta[:ND])
	// g = sigmoid(z): dz into dA (free again)
	dz := dA
	clear(dz)
	tensor.SigmoidBackward(dz, dGate, ws.gate[:ND])
	// Δx = h W_Δᵀ, z = h W_gᵀ + b_g
	dh := ws.dh[:NW]
	clear(dh)
	tensor.LinearBackward(dh, g.Delta, nil, dDelta, ws.h[:NW], c.Delta, N, W, D)
	if done != nil {
		done(cfg.Layers + 2) // W_Δ: its scratch is then W_g's
	}
	tensor.LinearBackward(dh, g.Gate, g.GateBias, dz, ws.h[:NW], c.Gate, N, W, D)
	// h = RMSNorm(r_L)
	dres := ws.dres[:NW]
	clear(dres)
	tensor.RMSNormBackward(dres, g.FinalNorm, dh, ws.resL[:NW], c.FinalNorm, ws.rstdF[:N], N, W)
	if done != nil {
		done(cfg.Layers)
	}

	// dres holds ∂loss/∂r_{l+1}; each block adds its branches' gradients
	// to it, turning it into ∂loss/∂r_l (the residual passes it through).
	for l := cfg.Layers - 1; l >= 0; l-- {
		blk, gb := trunkBlock(&c.Blocks[l]), trunkBlock(&g.Blocks[l])
		blk.Backward(cfg.dims(), &ws.pass, &gb, ws.res[l][:NW], ws.layers[l], dres, ws.back)
		if done != nil {
			done(l)
		}
	}

	// u = Σ_i x_i P_iᵀ + b_i; the sources are frozen inputs (per sequence).
	off := 0
	for _, sq := range ws.seqs {
		for i, s := range cfg.Sources {
			tensor.LinearBackward(nil, g.Proj[i], g.ProjBias[i], dres[off*W:(off+sq.T)*W], sq.Sources[i][:sq.T*s.Dim], c.Proj[i], sq.T, s.Dim, W)
		}
		off += sq.T
	}
	if done != nil {
		done(cfg.Layers + 1)
	}
}
