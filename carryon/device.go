package carryon

// The carry-on's training step on a tensor.Backend (a GPU through cuda/):
// the same graph as forward, lmHead and backward in net.go and backward.go,
// written as Backend ops over buffers on the device, so that the same code
// runs on tensor.CPU() (where carryontest checks it against the Model's own
// step) and on cuda.Backend. Parameters, gradients and AdamW's moments live
// on the device; the host copies (Model.Params, Optimizer.M and V) are
// brought up to date by Download.

import (
	"errors"
	"fmt"
	"math"

	"carryon/tensor"
)

// Device LM-head chunk bounds: positions·vocab of logits per chunk (256 MiB
// of float32), and at most one chunk per batch of rows.
const devCEChunkElems = 1 << 26

// DeviceTrainer runs training steps of one carry-on on a tensor.Backend:
// Accumulate (forward, the chunked LM-head cross-entropy, backward,
// gradients accumulated on the device) and Update (global-norm clipping
// and AdamW), which together are Model.LossAndGradBatch and Optimizer.Step.
// The frozen LM head W_pred stays on the device in float32. It belongs to
// one goroutine at a time; Close frees its device memory.
type DeviceTrainer struct {
	be  tensor.Backend
	m   *Model
	o   *Optimizer
	cfg Config

	hostWS *Workspace // the batch checks and positions/targets of coBatch (no activations)
	chunk  int        // LM-head rows per chunk
	owned  []tensor.Buf

	params, grads, mom, vel tensor.Buf // (P) each, laid out like Params
	p, g                    devWeights // views of params and grads
	head                    tensor.Buf // (V, D) W_pred
	ones                    tensor.Buf // (Rows) of 1: column sums as GEMMs
	src                     []tensor.Buf
	srcHost                 [][]float32
	pos, tg                 tensor.Buf // I32 (Rows)
	res                     []tensor.Buf
	acts                    []devActs
	back                    devBack
	rstdF, hF, dres, dh     tensor.Buf // (Rows), (Rows, W) ×3
	delta, gate, y          tensor.Buf // (Rows, D)
	dy, dA, dDelta, dGate   tensor.Buf // (Rows, D)
	logits, loss            tensor.Buf // (chunk, V), (Rows)
	lossHost                []float32
	tgHost                  []int32
}

// devWeights are Backend views of a buffer laid out like Params (Weights'
// device twin).
type devWeights = WeightsOf[tensor.Buf]

// devActs are one block's saved activations (transformer.Acts).
type devActs struct {
	xn1, q, k, v, att, mid, xn2 tensor.Buf // (Rows, W)
	rstd1, rstd2                tensor.Buf // (Rows)
	lse                         tensor.Buf // (Heads, Rows): sequence at Heads·offset
	gate, up, h                 tensor.Buf // (Rows, FFN)
}

// devBack is a block's backward scratch (transformer.BackScratch).
type devBack struct {
	dn, datt, dq, dk, dv tensor.Buf // (Rows, W)
	dh, dgate, dup       tensor.Buf // (Rows, FFN)
}

// NewDeviceTrainer uploads m's parameters, o's moments and the frozen LM
// head wPred (Vocab, D) to be and allocates the activations of batches of
// sequences of up to T positions and rows positions in all (as
// NewBatchWorkspace). o must be m's optimiser with float32 moments. The
// device holds 4·len(Params) + Vocab·D floats and about
// rows·Config.RowFloats() of activations.
func NewDeviceTrainer(be tensor.Backend, m *Model, o *Optimizer, wPred []float32, T, rows int) (*DeviceTrainer, error) {
	if o == nil || o.model != m {
		return nil, errors.New("carryon.NewDeviceTrainer: the optimiser is not this model's")
	}
	if o.M8 != nil {
		return nil, errors.New("carryon.NewDeviceTrainer: 8-bit moments do not run on a device: use float32 moments")
	}
	m.coCheckHead("NewDeviceTrainer", wPred)
	cfg := m.Config
	hw := m.hostWorkspace(T, rows)
	W, D, V, F, H, P := cfg.Width, cfg.D(), cfg.Vocab, cfg.FFN, cfg.Heads, len(m.Params)
	N := rows
	t := &DeviceTrainer{be: be, m: m, o: o, cfg: cfg, hostWS: hw,
		chunk: max(1, min(N, devCEChunkElems/V)), lossHost: make([]float32, N), tgHost: make([]int32, N)}
	var err error
	alloc := func(dt tensor.DType, n int) tensor.Buf {
		if err != nil {
			return nil
		}
		var b tensor.Buf
		if b, err = be.Alloc(dt, n); err == nil {
			t.owned = append(t.owned, b)
		}
		return b
	}
	f := func(n int) tensor.Buf { return alloc(tensor.F32, n) }
	t.params, t.grads, t.mom, t.vel = f(P), f(P), f(P), f(P)
	t.head, t.ones = f(V*D), f(N)
	for _, s := range cfg.Sources {
		t.src = append(t.src, f(N*s.Dim))
		t.srcHost = append(t.srcHost, make([]float32, N*s.Dim))
	}
	t.pos, t.tg = alloc(tensor.I32, N), alloc(tensor.I32, N)
	for range cfg.Layers + 1 {
		t.res = append(t.res, f(N*W))
	}
	for range cfg.Layers {
		t.acts = append(t.acts, devActs{xn1: f(N * W), q: f(N * W), k: f(N * W), v: f(N * W), att: f(N * W),
			mid: f(N * W), xn2: f(N * W), rstd1: f(N), rstd2: f(N), lse: f(H * N),
			gate: f(N * F), up: f(N * F), h: f(N * F)})
	}
	t.back = devBack{dn: f(N * W), datt: f(N * W), dq: f(N * W), dk: f(N * W), dv: f(N * W),
		dh: f(N * F), dgate: f(N * F), dup: f(N * F)}
	t.rstdF, t.hF, t.dres, t.dh = f(N), f(N*W), f(N*W), f(N*W)
	t.delta, t.gate, t.y = f(N*D), f(N*D), f(N*D)
	t.dy, t.dA, t.dDelta, t.dGate = f(N*D), f(N*D), f(N*D), f(N*D)
	t.logits, t.loss = f(t.chunk*V), f(N)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("carryon.NewDeviceTrainer: allocating on %s: %w", be.Name(), err)
	}
	ones := make([]float32, N)
	for i := range ones {
		ones[i] = 1
	}
	be.UploadF32(t.ones, ones)
	be.UploadF32(t.head, wPred)
	be.UploadF32(t.params, m.Params)
	be.UploadF32(t.mom, o.M)
	be.UploadF32(t.vel, o.V)
	t.p, t.g = t.views(t.params), t.views(t.grads)
	if err := be.Sync(); err != nil {
		t.Close()
		return nil, fmt.Errorf("carryon.NewDeviceTrainer: uploading to %s: %w", be.Name(), err)
	}
	return t, nil
}

// hostWorkspace is a Workspace with only what coBatch fills (the rows'
// positions and targets) and the RoPE tables: the device trainer's
// argument checks and the host side of its batches.
func (c *Model) hostWorkspace(T, rows int) *Workspace {
	if T < 1 || T > c.Config.MaxSeq {
		panic(fmt.Sprintf("model.Model.NewWorkspace: T = %d out of range [1, MaxSeq = %d]", T, c.Config.MaxSeq))
	}
	if rows < T || rows > coMaxRows {
		panic(fmt.Sprintf("model.Model.NewBatchWorkspace: rows = %d out of range [T = %d, %d]", rows, T, coMaxRows))
	}
	return &Workspace{T: T, Rows: rows, cfg: c.Config, pos: make([]int32, rows), tg: make([]int32, rows),
		rope: tensor.NewRoPE(c.Config.HeadDim(), T, c.Config.RopeTheta, nil, false)}
}

// views cuts buf (laid out like Params) into the tensors' device views.
func (t *DeviceTrainer) views(buf tensor.Buf) devWeights {
	return weightsOf(t.cfg, t.m.tensors, func(tn Tensor) tensor.Buf { return t.be.View(buf, tn.Offset, tn.Numel()) })
}

// Close frees the trainer's device memory.
func (t *DeviceTrainer) Close() {
	for _, b := range t.owned {
		t.be.Free(b)
	}
	t.owned = nil
}

// Backend returns the backend the trainer runs on.
func (t *DeviceTrainer) Backend() tensor.Backend { return t.be }

// Rows is the most positions one Accumulate takes.
func (t *DeviceTrainer) Rows() int { return t.hostWS.Rows }

// Step is Accumulate then Update: one optimiser step on one batch, with
// gradScale 1/count (the mean token loss). It returns the loss sum, the
// count of counted targets and the gradient norm before clipping.
func (t *DeviceTrainer) Step(seqs []Seq) (lossSum float64, count int, gradNorm float64, err error) {
	count = 0
	for _, sq := range seqs {
		for _, v := range sq.Targets[:min(sq.T, len(sq.Targets))] {
			if v >= 0 {
				count++
			}
		}
	}
	lossSum, count, err = t.Accumulate(seqs, 1/float32(max(count, 1)))
	if err != nil {
		return lossSum, count, 0, err
	}
	gradNorm, err = t.Update()
	return lossSum, count, gradNorm, err
}

// Accumulate runs the batch (at most Rows positions) forward with
// Config.Alpha, its LM-head cross-entropy and backward, adding
// gradScale·∂loss/∂params into the device's gradients (Model.LossAndGradBatch
// on the device). It returns the unscaled loss sum over counted targets
// and their number.
func (t *DeviceTrainer) Accumulate(seqs []Seq, gradScale float32) (lossSum float64, count int, err error) {
	N := t.m.coBatch("DeviceTrainer.Accumulate", t.hostWS, seqs, true)
	t.upload(N)
	alpha := t.m.Config.Alpha
	t.forward(N, alpha)
	t.lmHead(N, gradScale)
	t.backward(N, alpha)
	t.be.DownloadF32(t.lossHost[:N], t.be.View(t.loss, 0, N))
	if err := t.be.Sync(); err != nil {
		return 0, 0, fmt.Errorf("carryon.DeviceTrainer.Accumulate: %w", err)
	}
	for i, l := range t.lossHost[:N] {
		if t.hostWS.tg[i] >= 0 {
			lossSum += float64(l)
			count++
		}
	}
	return lossSum, count, nil
}

// Update clips the accumulated gradients to the global norm
// OptimConfig.ClipNorm, applies one AdamW step of the optimiser's schedule
// (counting it in Optimizer.Steps) and zeroes the gradients: Optimizer.Step
// on the device. It returns the gradient norm before clipping.
func (t *DeviceTrainer) Update() (gradNorm float64, err error) {
	be, cfg := t.be, t.o.Config
	ss, err := be.SumSquares(t.grads)
	if err != nil {
		return 0, fmt.Errorf("carryon.DeviceTrainer.Update: %w", err)
	}
	gradNorm = math.Sqrt(ss)
	if cfg.ClipNorm > 0 {
		if coef := cfg.ClipNorm / (gradNorm + 1e-6); coef < 1 {
			be.Scale(t.grads, float32(coef))
		}
	}
	lr := t.o.LR()
	t.o.Steps++
	// One AdamW call per run of neighbouring tensors with the same decay.
	ts := t.m.tensors
	for i := 0; i < len(ts); {
		j := i + 1
		for j < len(ts) && ts[j].Decay == ts[i].Decay {
			j++
		}
		off, n := ts[i].Offset, ts[j-1].Offset+ts[j-1].Numel()-ts[i].Offset
		wd := float32(0)
		if ts[i].Decay {
			wd = cfg.WeightDecay
		}
		v := func(b tensor.Buf) tensor.Buf { return be.View(b, off, n) }
		be.AdamW(v(t.params), v(t.grads), v(t.mom), v(t.vel), t.o.Steps, lr, cfg.Beta1, cfg.Beta2, cfg.Eps, wd)
		i = j
	}
	be.Zero(t.grads)
	if err := be.Sync(); err != nil {
		return gradNorm, fmt.Errorf("carryon.DeviceTrainer.Update: %w", err)
	}
	return gradNorm, nil
}

// Download copies the device's parameters into Model.Params and its
// moments into Optimizer.M and V (before an evaluation on the host, a
// checkpoint or the end of training).
func (t *DeviceTrainer) Download() error {
	t.be.DownloadF32(t.m.Params, t.params)
	t.be.DownloadF32(t.o.M, t.mom)
	t.be.DownloadF32(t.o.V, t.vel)
	if err := t.be.Sync(); err != nil {
		return fmt.Errorf("carryon.DeviceTrainer.Download: %w", err)
	}
	return nil
}

// Grads copies the accumulated gradients (laid out like Params) into dst.
func (t *DeviceTrainer) Grads(dst []float32) error {
	t.be.DownloadF32(dst[:len(t.m.Params)], t.grads)
	if err := t.be.Sync(); err != nil {
		return fmt.Errorf("carryon.DeviceTrainer.Grads: %w", err)
	}
	return nil
}

// upload sends the batch's sources (concatenated per source), positions
// and targets.
func (t *DeviceTrainer) upload(N int) {
	for i, s := range t.cfg.Sources {
		h, off := t.srcHost[i], 0
		for _, sq := range t.hostWS.seqs {
			copy(h[off*s.Dim:(off+sq.T)*s.Dim], sq.Sources[i][:sq.T*s.Dim])
			off += sq.T
		}
		t.be.UploadF32(t.src[i], h[:N*s.Dim])
	}
	t.be.UploadI32(t.pos, t.hostWS.pos[:N])
	t.be.UploadI32(t.tg, t.hostWS.tg[:N])
}

// linear is out (n, oc) = inp (n, ic)·Wᵀ (+ bias).
func (t *DeviceTrainer) linear(out, inp, w, bias tensor.Buf, n, ic, oc int) {
	t.be.Gemm(false, true, n, oc, ic, 1, inp, ic, w, ic, 0, out, oc)
	if bias != nil {
		t.be.AddBias(out, bias, n, oc)
	}
}

// linearBack is tensor.LinearBackward: dinp += dout·W, dw += doutᵀ·inp,
// dbias += column sums of dout (a GEMM with a row of ones); nils skip.
func (t *DeviceTrainer) linearBack(dinp, dw, dbias, dout, inp, w tensor.Buf, n, ic, oc int) {
	be := t.be
	if dinp != nil {
		be.Gemm(false, false, n, ic, oc, 1, dout, oc, w, ic, 1, dinp, ic)
	}
	if dw != nil {
		be.Gemm(true, false, oc, ic, n, 1, dout, oc, inp, ic, 1, dw, ic)
	}
	if dbias != nil {
		be.Gemm(false, false, 1, oc, n, 1, be.View(t.ones, 0, n), n, dout, oc, 1, dbias, oc)
	}
}

// v is the first n elements of b.
func (t *DeviceTrainer) v(b tensor.Buf, n int) tensor.Buf { return t.be.View(b, 0, n) }

// forward is Model.forward on the device: u, the blocks, the heads and
// the blend y = x̂ + α·g⊙Δx, over the batch's N rows.
func (t *DeviceTrainer) forward(N int, alpha float32) {
	be, cfg := t.be, t.cfg
	W, D, F, H, hd := cfg.Width, cfg.D(), cfg.FFN, cfg.Heads, cfg.HeadDim()
	NW, ND := N*W, N*D
	v := t.v

	// u = Σ_i x_i P_iᵀ + b_i
	u := v(t.res[0], NW)
	for i, s := range cfg.Sources {
		beta := float32(1)
		if i == 0 {
			beta = 0
		}
		be.Gemm(false, true, N, W, s.Dim, 1, v(t.src[i], N*s.Dim), s.Dim, t.p.Proj[i], s.Dim, beta, u, W)
	}
	for i := range cfg.Sources {
		be.AddBias(u, t.p.ProjBias[i], N, W)
	}

	pos, rope, eps := v(t.pos, N), t.hostWS.rope, cfg.NormEps
	offs := t.hostWS.offsets()
	for l := range t.acts {
		a, p := &t.acts[l], &t.p.Blocks[l]
		in, out := v(t.res[l], NW), v(t.res[l+1], NW)
		xn1, q, k, vv, att := v(a.xn1, NW), v(a.q, NW), v(a.k, NW), v(a.v, NW), v(a.att, NW)
		mid, xn2 := v(a.mid, NW), v(a.xn2, NW)
		be.RMSNormForward(xn1, a.rstd1, in, p.AttnNorm, N, W, eps)
		t.linear(q, xn1, p.WQ, nil, N, W, W)
		t.linear(k, xn1, p.WK, nil, N, W, W)
		t.linear(vv, xn1, p.WV, nil, N, W, W)
		be.RoPE(rope, q, pos, N, H, false)
		be.RoPE(rope, k, pos, N, H, false)
		for s := 1; s < len(offs); s++ {
			r0, n := offs[s-1], offs[s]-offs[s-1]
			be.AttentionForward(be.View(att, r0*W, n*W), be.View(a.lse, H*r0, H*n), be.View(q, r0*W, n*W),
				be.View(k, r0*W, n*W), be.View(vv, r0*W, n*W), n, H, H, hd)
		}
		t.linear(mid, att, p.WO, nil, N, W, W)
		be.AddInPlace(mid, in)
		be.RMSNormForward(xn2, a.rstd2, mid, p.MLPNorm, N, W, eps)
		gate, up, h := v(a.gate, N*F), v(a.up, N*F), v(a.h, N*F)
		t.linear(gate, xn2, p.WGate, nil, N, W, F)
		t.linear(up, xn2, p.WUp, nil, N, W, F)
		be.SwiGLUForward(h, gate, up)
		t.linear(out, h, p.WDown, nil, N, F, W)
		be.AddInPlace(out, mid)
	}

	// h = RMSNorm(r_L), Δx = h W_Δᵀ, g = sigmoid(h W_gᵀ + b_g)
	hF, delta, gate := v(t.hF, NW), v(t.delta, ND), v(t.gate, ND)
	be.RMSNormForward(hF, t.rstdF, v(t.res[cfg.Layers], NW), t.p.FinalNorm, N, W, eps)
	t.linear(delta, hF, t.p.Delta, nil, N, W, D)
	t.linear(gate, hF, t.p.Gate, t.p.GateBias, N, W, D)
	be.SigmoidForward(gate, gate)
	// y = x̂ + α·(g⊙Δx), with dA as the product's scratch
	y, tmp := v(t.y, ND), v(t.dA, ND)
	be.Zero(y)
	be.AddInPlace(y, v(t.src[0], ND))
	be.MulForward(tmp, gate, delta)
	be.Scale(tmp, alpha)
	be.AddInPlace(y, tmp)
}

// lmHead is the chunked cross-entropy of y against the targets: per chunk,
// logits = y·W_predᵀ, SoftmaxXent (gradient gradScale·(softmax − onehot)
// in place, each row's loss into t.loss), dy = dlogits·W_pred.
func (t *DeviceTrainer) lmHead(N int, gradScale float32) {
	be, D, V := t.be, t.cfg.D(), t.cfg.Vocab
	for r0 := 0; r0 < N; r0 += t.chunk {
		n := min(t.chunk, N-r0)
		lg := t.v(t.logits, n*V)
		be.Gemm(false, true, n, V, D, 1, be.View(t.y, r0*D, n*D), D, t.head, D, 0, lg, V)
		be.SoftmaxXent(lg, be.View(t.tg, r0, n), be.View(t.loss, r0, n), n, V, gradScale)
		be.Gemm(false, false, n, D, V, 1, lg, V, t.head, D, 0, be.View(t.dy, r0*D, n*D), D)
	}
}

// backward is Model.backward on the device: from dy (N, D) to the
// parameters' gradients, accumulated into t.grads.
func (t *DeviceTrainer) backward(N int, alpha float32) {
	be, cfg := t.be, t.cfg
	W, D, F, H, hd := cfg.Width, cfg.D(), cfg.FFN, cfg.Heads, cfg.HeadDim()
	NW, ND := N*W, N*D
	v := t.v
	g := &t.g

	// y = x̂ + α·g⊙Δx: dΔx = α·dy⊙g, dg = α·dy⊙Δx
	dA, dDelta, dGate := v(t.dA, ND), v(t.dDelta, ND), v(t.dGate, ND)
	be.Zero(dA)
	be.AddInPlace(dA, v(t.dy, ND))
	be.Scale(dA, alpha)
	be.Zero(dDelta)
	be.Zero(dGate)
	gate, delta, hF := v(t.gate, ND), v(t.delta, ND), v(t.hF, NW)
	be.MulBackward(dGate, dDelta, dA, gate, delta)
	dz := dA // g = sigmoid(z)
	be.Zero(dz)
	be.SigmoidBackward(dz, dGate, gate)
	dh := v(t.dh, NW)
	be.Zero(dh)
	t.linearBack(dh, g.Delta, nil, dDelta, hF, t.p.Delta, N, W, D)
	t.linearBack(dh, g.Gate, g.GateBias, dz, hF, t.p.Gate, N, W, D)
	dres := v(t.dres, NW)
	be.Zero(dres)
	be.RMSNormBackward(dres, g.FinalNorm, dh, v(t.res[cfg.Layers], NW), t.p.FinalNorm, t.rstdF, N, W)

	// The blocks from the last (transformer.Block.Backward): dres holds
	// ∂loss/∂r_{l+1} and becomes ∂loss/∂r_l.
	pos, rope := v(t.pos, N), t.hostWS.rope
	offs := t.hostWS.offsets()
	bs := &t.back
	dn, datt, dq, dk, dv := v(bs.dn, NW), v(bs.datt, NW), v(bs.dq, NW), v(bs.dk, NW), v(bs.dv, NW)
	dhF, dgate, dup := v(bs.dh, N*F), v(bs.dgate, N*F), v(bs.dup, N*F)
	for l := cfg.Layers - 1; l >= 0; l-- {
		a, p, gb := &t.acts[l], &t.p.Blocks[l], &g.Blocks[l]
		in := v(t.res[l], NW)
		xn1, q, k, vv, att := v(a.xn1, NW), v(a.q, NW), v(a.k, NW), v(a.v, NW), v(a.att, NW)
		mid, xn2 := v(a.mid, NW), v(a.xn2, NW)
		// MLP: out = mid + down(h)
		be.Zero(dhF)
		t.linearBack(dhF, gb.WDown, nil, dres, v(a.h, N*F), p.WDown, N, F, W)
		be.Zero(dgate)
		be.Zero(dup)
		be.SwiGLUBackward(dgate, dup, dhF, v(a.gate, N*F), v(a.up, N*F))
		be.Zero(dn)
		t.linearBack(dn, gb.WGate, nil, dgate, xn2, p.WGate, N, W, F)
		t.linearBack(dn, gb.WUp, nil, dup, xn2, p.WUp, N, W, F)
		be.RMSNormBackward(dres, gb.MLPNorm, dn, mid, p.MLPNorm, a.rstd2, N, W)
		// Attention: mid = in + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1)))
		be.Zero(datt)
		t.linearBack(datt, gb.WO, nil, dres, att, p.WO, N, W, W)
		be.Zero(dq)
		be.Zero(dk)
		be.Zero(dv)
		for s := 1; s < len(offs); s++ {
			r0, n := offs[s-1], offs[s]-offs[s-1]
			w := func(b tensor.Buf) tensor.Buf { return be.View(b, r0*W, n*W) }
			be.AttentionBackward(w(dq), w(dk), w(dv), w(datt), w(q), w(k), w(vv), w(att),
				be.View(a.lse, H*r0, H*n), n, H, H, hd)
		}
		be.RoPE(rope, dq, pos, N, H, true)
		be.RoPE(rope, dk, pos, N, H, true)
		be.Zero(dn)
		t.linearBack(dn, gb.WQ, nil, dq, xn1, p.WQ, N, W, W)
		t.linearBack(dn, gb.WK, nil, dk, xn1, p.WK, N, W, W)
		t.linearBack(dn, gb.WV, nil, dv, xn1, p.WV, N, W, W)
		be.RMSNormBackward(dres, gb.AttnNorm, dn, in, p.AttnNorm, a.rstd1, N, W)
	}

	// u = Σ_i x_i P_iᵀ + b_i (the sources are frozen inputs)
	for i, s := range cfg.Sources {
		t.linearBack(nil, g.Proj[i], g.ProjBias[i], dres, v(t.src[i], N*s.Dim), t.p.Proj[i], N, s.Dim, W)
	}
}
