package devmodel

import (
	"errors"
	"fmt"

	"carryon/model"
	"carryon/tensor"
)

// MaxBatchTokens is how many tokens one pass runs; longer batches are split
// between sequences (a single longer sequence runs alone).
const MaxBatchTokens = 8192

// workspace holds the activations of one pass for up to rows tokens and
// sequences of up to maxT tokens.
type workspace struct {
	rows, maxT               int
	x, xn, q, k, v, att, lse tensor.Buf
	gate, up, h, ids, pos    tensor.Buf
}

func (w *workspace) free(be tensor.Backend) {
	for _, b := range []tensor.Buf{w.x, w.xn, w.q, w.k, w.v, w.att, w.lse, w.gate, w.up, w.h, w.ids, w.pos} {
		be.Free(b)
	}
}

// workspaceFor returns a workspace for T rows and sequences up to maxT.
func (b *Base) workspaceFor(T, maxT int) (*workspace, error) {
	if b.ws != nil && b.ws.rows >= T && b.ws.maxT >= maxT {
		return b.ws, nil
	}
	if b.ws != nil {
		b.ws.free(b.be)
		b.ws = nil
	}
	c := b.Config
	T, maxT = max(T, 64), max(maxT, 64)
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	w := &workspace{rows: T, maxT: maxT}
	for _, a := range []struct {
		dst *tensor.Buf
		dt  tensor.DType
		n   int
	}{{&w.x, tensor.F32, T * c.Dim}, {&w.xn, tensor.F32, T * c.Dim}, {&w.q, tensor.F32, T * qd},
		{&w.k, tensor.F32, T * kvd}, {&w.v, tensor.F32, T * kvd}, {&w.att, tensor.F32, T * qd},
		{&w.lse, tensor.F32, c.Heads * maxT}, {&w.gate, tensor.F32, T * c.FFN}, {&w.up, tensor.F32, T * c.FFN},
		{&w.h, tensor.F32, T * c.Dim}, {&w.ids, tensor.I32, T}, {&w.pos, tensor.I32, T}} {
		buf, err := b.be.Alloc(a.dt, a.n)
		if err != nil {
			w.free(b.be)
			return nil, err
		}
		*a.dst = buf
	}
	b.ws = w
	return w, nil
}

// Forward runs one sequence; see ForwardBatch.
func (b *Base) Forward(ids []int32, layers []int) ([][]float32, error) {
	out, err := b.ForwardBatch([][]int32{ids}, layers)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// ForwardBatch is model.Base.ForwardBatch on the backend: per sequence, the
// hidden states after each requested layer (0 = embeddings, i = after
// block i, model.FinalLayer = after the final norm), each (T, Dim).
func (b *Base) ForwardBatch(seqs [][]int32, layers []int) ([][][]float32, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bufs == nil {
		return nil, fmt.Errorf("devmodel.Forward: %w", ErrClosed)
	}
	if len(seqs) == 0 {
		return nil, errors.New("devmodel.ForwardBatch: no sequences")
	}
	if err := b.check(seqs, layers); err != nil {
		return nil, err
	}
	out := make([][][]float32, 0, len(seqs))
	for _, g := range model.TokenBatches(seqs, MaxBatchTokens) {
		res, err := b.forward(g, layers)
		if err != nil {
			return nil, err
		}
		out = append(out, res...)
	}
	return out, nil
}

func (b *Base) check(seqs [][]int32, layers []int) error {
	c := b.Config
	for s, ids := range seqs {
		if len(ids) == 0 || len(ids) > c.MaxPos {
			return fmt.Errorf("devmodel.Forward: sequence %d has %d tokens (want 1..%d)", s, len(ids), c.MaxPos)
		}
		for i, id := range ids {
			if id < 0 || int(id) >= c.Vocab {
				return fmt.Errorf("devmodel.Forward: sequence %d: token %d at position %d is outside the vocabulary [0, %d)", s, id, i, c.Vocab)
			}
		}
	}
	if len(layers) == 0 {
		return errors.New("devmodel.Forward: no layers requested")
	}
	for _, l := range layers {
		if l != model.FinalLayer && (l < 0 || l > c.Layers) {
			return fmt.Errorf("devmodel.Forward: layer %d: want model.FinalLayer (-1) or 0..%d", l, c.Layers)
		}
	}
	return nil
}

func (b *Base) ropeFor(T int) *tensor.RoPE {
	if b.rope == nil || b.rope.MaxPos < T {
		c := b.Config
		b.rope = tensor.NewRoPE(c.HeadDim, min(max(T, 1024), c.MaxPos), c.RopeTheta, c.RopeScaling, false)
	}
	return b.rope
}

// linear is out (n, oc) = inp (n, ic)·Wᵀ + bias.
func (b *Base) linear(out, inp, w, bias tensor.Buf, n, ic, oc int) {
	b.be.Gemm(false, true, n, oc, ic, 1, inp, ic, w, ic, 0, out, oc)
	if bias != nil {
		b.be.AddBias(out, bias, n, oc)
	}
}

// forward runs one variable-length batch of checked sequences.
func (b *Base) forward(seqs [][]int32, layers []int) ([][][]float32, error) {
	c := b.Config
	be := b.be
	D, hd := c.Dim, c.HeadDim
	qd, kvd := c.Heads*hd, c.KVHeads*hd
	ids, pos, off, maxT := model.PackBatch(seqs)
	T := len(ids)
	w, err := b.workspaceFor(T, maxT)
	if err != nil {
		return nil, fmt.Errorf("devmodel.Forward: workspace for %d tokens: %w", T, err)
	}
	rope := b.ropeFor(maxT)
	v := func(x tensor.Buf, n int) tensor.Buf { return be.View(x, 0, n) }
	x, xn, q, k, vv, att := v(w.x, T*D), v(w.xn, T*D), v(w.q, T*qd), v(w.k, T*kvd), v(w.v, T*kvd), v(w.att, T*qd)
	gate, up := v(w.gate, T*c.FFN), v(w.up, T*c.FFN)
	idb, pb := v(w.ids, T), v(w.pos, T)
	be.UploadI32(idb, ids)
	be.UploadI32(pb, pos)

	out := make([][][]float32, len(seqs))
	for s := range out {
		out[s] = make([][]float32, len(layers))
	}
	save := func(h tensor.Buf, want func(l int) bool) {
		var host []float32
		for i, l := range layers {
			if !want(l) {
				continue
			}
			if host == nil {
				host = make([]float32, T*D)
				be.DownloadF32(host, h)
			}
			for s := range seqs {
				out[s][i] = append([]float32(nil), host[off[s]*D:off[s+1]*D]...)
			}
		}
	}
	be.Embedding(x, b.embed, idb, D)
	save(x, func(l int) bool { return l == 0 })
	for li := range b.layers {
		l := &b.layers[li]
		be.RMSNormForward(xn, nil, x, l.attnNorm, T, D, c.NormEps)
		b.linear(q, xn, l.wq, l.bq, T, D, qd)
		b.linear(k, xn, l.wk, l.bk, T, D, kvd)
		b.linear(vv, xn, l.wv, l.bv, T, D, kvd)
		if l.qNorm != nil {
			be.RMSNormForward(q, nil, q, l.qNorm, T*c.Heads, hd, c.NormEps)
			be.RMSNormForward(k, nil, k, l.kNorm, T*c.KVHeads, hd, c.NormEps)
		}
		be.RoPE(rope, q, pb, T, c.Heads, false)
		be.RoPE(rope, k, pb, T, c.KVHeads, false)
		for s := range seqs {
			r0, r1 := off[s], off[s+1]
			n := r1 - r0
			be.AttentionForward(be.View(att, r0*qd, n*qd), be.View(w.lse, 0, c.Heads*n), be.View(q, r0*qd, n*qd),
				be.View(k, r0*kvd, n*kvd), be.View(vv, r0*kvd, n*kvd), n, c.Heads, c.KVHeads, hd)
		}
		b.linear(xn, att, l.wo, nil, T, qd, D)
		be.AddInPlace(x, xn)
		be.RMSNormForward(xn, nil, x, l.mlpNorm, T, D, c.NormEps)
		b.linear(gate, xn, l.gate, nil, T, D, c.FFN)
		b.linear(up, xn, l.up, nil, T, D, c.FFN)
		be.SwiGLUForward(gate, gate, up)
		b.linear(xn, gate, l.down, nil, T, c.FFN, D)
		be.AddInPlace(x, xn)
		save(x, func(l int) bool { return l == li+1 })
	}
	h := v(w.h, T*D)
	be.RMSNormForward(h, nil, x, b.finalNorm, T, D, c.NormEps)
	save(h, func(l int) bool { return l == model.FinalLayer })
	if err := be.Sync(); err != nil {
		return nil, fmt.Errorf("devmodel.Forward: %w", err)
	}
	return out, nil
}
