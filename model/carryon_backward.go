package model

import (
	"fmt"

	"carryon/tensor"
)

// LossAndGrad runs Forward (with Config.Alpha), the chunked LM-head
// cross-entropy against targets (T; targets[t] is the token after position
// t, -1 = ignore) and the backward pass, ACCUMULATING parameter gradients
// scaled by gradScale into grads (len(Params), laid out like Params).
// wPred: (Vocab, D), frozen and only read; ws keeps it packed across calls
// (see headPack), so it must not change in place while ws is used with it. It returns the unscaled loss sum
// over counted targets and their number. Beyond ws it allocates nothing
// itself (tensor's kernels may use their own packing buffers).
func (c *CarryOn) LossAndGrad(ws *Workspace, sources [][]float32, targets []int32, T int, wPred []float32, gradScale float32, grads []float32) (lossSum float64, count int) {
	c.coCheckHead("LossAndGrad", targets, T, wPred)
	if len(grads) != len(c.Params) {
		panic(fmt.Sprintf("model.CarryOn.LossAndGrad: grads has %d values, want len(Params) = %d", len(grads), len(c.Params)))
	}
	alpha := c.Config.Alpha
	y := c.Forward(ws, sources, T, alpha)
	D := c.Config.D()
	dy := ws.dy[:T*D]
	clear(dy)
	if wt, w := ws.head.get(wPred, c.Config.Vocab, D, true); wt != nil {
		lossSum, count = tensor.CrossEntropyLMHeadPacked(dy, y, wPred, wt, w, targets[:T], T, ws.ceChunk, gradScale, ws.ceScratch)
	} else {
		lossSum, count = tensor.CrossEntropyLMHead(dy, y, wPred, targets[:T], T, D, c.Config.Vocab, ws.ceChunk, gradScale, ws.ceScratch)
	}
	if len(ws.gradsOf) != len(grads) || &ws.gradsOf[0] != &grads[0] {
		ws.grads, ws.gradsOf = c.Views(grads), grads // bound once per buffer
	}
	c.backward(ws, sources, T, alpha, dy, ws.grads)
	return lossSum, count
}

// backward propagates dy (T, D) = ∂loss/∂y through the activations saved in
// ws by the last Forward, accumulating into g. It calls the tensor
// backwards in the reverse order of Forward.
func (c *CarryOn) backward(ws *Workspace, sources [][]float32, T int, alpha float32, dy []float32, g CarryOnWeights) {
	cfg := c.Config
	W, F, D, H, hd := cfg.Width, cfg.FFN, cfg.D(), cfg.Heads, cfg.HeadDim()
	TW, TF, TD := T*W, T*F, T*D

	// y = x̂ + α·g⊙Δx: dΔx = α·dy⊙g, dg = α·dy⊙Δx (x̂ is a frozen input)
	dA, dDelta, dGate := ws.dtmp[:TD], ws.dDelta[:TD], ws.dGate[:TD]
	for i, v := range dy {
		dA[i] = alpha * v
	}
	clear(dDelta)
	clear(dGate)
	tensor.MulBackward(dGate, dDelta, dA, ws.gate[:TD], ws.delta[:TD])
	// g = sigmoid(z): dz into dA (free again)
	dz := dA
	clear(dz)
	tensor.SigmoidBackward(dz, dGate, ws.gate[:TD])
	// Δx = h W_Δᵀ, z = h W_gᵀ + b_g
	dh := ws.dh[:TW]
	clear(dh)
	tensor.LinearBackward(dh, g.Delta, nil, dDelta, ws.h[:TW], c.Delta, T, W, D)
	tensor.LinearBackward(dh, g.Gate, g.GateBias, dz, ws.h[:TW], c.Gate, T, W, D)
	// h = RMSNorm(r_L)
	dres := ws.dres[:TW]
	clear(dres)
	tensor.RMSNormBackward(dres, g.FinalNorm, dh, ws.resL[:TW], c.FinalNorm, ws.rstdF[:T], T, W)

	// dres holds ∂loss/∂r_{l+1}; each block adds its branches' gradients
	// to it, turning it into ∂loss/∂r_l (the residual passes it through).
	dn := ws.dn[:TW]
	for l := cfg.Layers - 1; l >= 0; l-- {
		b, a, gb := &c.Blocks[l], &ws.layers[l], &g.Blocks[l]
		// out = mid + sw W_downᵀ
		dsw, dga, dua := ws.dsw[:TF], ws.dga[:TF], ws.dua[:TF]
		clear(dsw)
		tensor.LinearBackward(dsw, gb.WDown, nil, dres, a.sw[:TF], b.WDown, T, F, W)
		clear(dga)
		clear(dua)
		tensor.SwiGLUBackward(dga, dua, dsw, a.ga[:TF], a.ua[:TF])
		clear(dn)
		tensor.LinearBackward(dn, gb.WGate, nil, dga, a.mn[:TW], b.WGate, T, W, F)
		tensor.LinearBackward(dn, gb.WUp, nil, dua, a.mn[:TW], b.WUp, T, W, F)
		tensor.RMSNormBackward(dres, gb.MLPNorm, dn, a.mid[:TW], b.MLPNorm, a.rstd2[:T], T, W)
		// mid = in + att W_oᵀ
		datt := ws.datt[:TW]
		clear(datt)
		tensor.LinearBackward(datt, gb.WO, nil, dres, a.att[:TW], b.WO, T, W, W)
		dq, dk, dv := ws.dq[:TW], ws.dk[:TW], ws.dv[:TW]
		clear(dq)
		clear(dk)
		clear(dv)
		tensor.AttentionBackward(dq, dk, dv, datt, a.q[:TW], a.k[:TW], a.v[:TW], a.att[:TW], a.lse[:H*T], ws.attScratch, T, H, H, hd)
		ws.rope.Backward(dq, ws.pos[:T], T, H)
		ws.rope.Backward(dk, ws.pos[:T], T, H)
		clear(dn)
		tensor.LinearBackward(dn, gb.WQ, nil, dq, a.an[:TW], b.WQ, T, W, W)
		tensor.LinearBackward(dn, gb.WK, nil, dk, a.an[:TW], b.WK, T, W, W)
		tensor.LinearBackward(dn, gb.WV, nil, dv, a.an[:TW], b.WV, T, W, W)
		tensor.RMSNormBackward(dres, gb.AttnNorm, dn, ws.res[l][:TW], b.AttnNorm, a.rstd1[:T], T, W)
	}

	// u = Σ_i x_i P_iᵀ + b_i; the sources are frozen inputs.
	for i, s := range cfg.Sources {
		tensor.LinearBackward(nil, g.Proj[i], g.ProjBias[i], dres, sources[i][:T*s.Dim], c.Proj[i], T, s.Dim, W)
	}
}
