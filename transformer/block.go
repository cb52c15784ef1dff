// Package transformer is the pre-norm decoder block that every network in
// carryon is made of, written once: the frozen bases of the llama, qwen2 and
// qwen3 families (inference, KV-cached decoding, pretraining) and the
// carry-on (training and decoding) all run Block.Forward, and the two that
// train run Block.Backward, which calls the tensor package's backwards in
// the reverse order of Forward:
//
//	xn1  = RMSNorm(in) ⊙ AttnNorm
//	q, k, v = xn1·{WQ, WK, WV}ᵀ (+ BQ, BK, BV: qwen2)
//	q, k = RMSNorm per head ⊙ {QNorm, KNorm}           (qwen3 only; inference only)
//	q, k = RoPE(q, k) at Pass.Pos
//	att  = causal GQA attention(q, k, v), within each sequence of the pass
//	mid  = in + att·WOᵀ
//	xn2  = RMSNorm(mid) ⊙ MLPNorm
//	h    = silu(xn2·Gateᵀ) ⊙ (xn2·Upᵀ)
//	out  = mid + h·Downᵀ
//
// A pass runs several sequences of different lengths as one (N, Dim)
// matrix: every weight product covers all rows at once, RoPE positions and
// causal attention are per sequence (Pass.Seqs).
package transformer

import (
	"fmt"

	"carryon/tensor"
)

// Dims are a block's sizes.
type Dims struct {
	Dim     int     // width of the residual stream
	Heads   int     // query heads
	KVHeads int     // key/value heads (GQA: Heads is a multiple)
	HeadDim int     // hd
	FFN     int     // MLP width
	NormEps float32 // RMSNorm ε
}

// QDim is Heads·hd, the width of q and of the attention output.
func (d Dims) QDim() int { return d.Heads * d.HeadDim }

// KVDim is KVHeads·hd, the width of k and v.
func (d Dims) KVDim() int { return d.KVHeads * d.HeadDim }

// Linear is a weight W (out, in) applied as out (n, oc) = in (n, ic)·Wᵀ
// (+ bias (oc), when not nil). A base's weights may be packed or stay in
// their file's format; trainable weights are F32.
type Linear interface {
	Apply(out, in, bias []float32, n, ic, oc int)
}

// F32 is a float32 weight in nn.Linear layout (out, in), row-major: the
// form Backward needs.
type F32 []float32

// Apply is tensor.LinearForward.
func (w F32) Apply(out, in, bias []float32, n, ic, oc int) {
	tensor.LinearForward(out, in, w, bias, n, ic, oc)
}

// Block holds one block's weights (or, for Backward's g, their gradients).
type Block struct {
	AttnNorm, MLPNorm []float32 // (Dim)
	WQ                Linear    // (Heads·hd, Dim)
	WK, WV            Linear    // (KVHeads·hd, Dim)
	WO                Linear    // (Dim, Heads·hd)
	BQ                []float32 // (Heads·hd) or nil
	BK, BV            []float32 // (KVHeads·hd) or nil
	QNorm, KNorm      []float32 // (hd) or nil: per-head q/k RMSNorm (qwen3)
	Gate, Up          Linear    // (FFN, Dim)
	Down              Linear    // (Dim, FFN)
}

// Pass describes the rows one call runs over.
type Pass struct {
	N    int          // rows
	Pos  []int32      // (N) RoPE positions
	Seqs []int        // row offsets: sequence s is rows Seqs[s]..Seqs[s+1]-1 (len ≥ 2, Seqs[0] = 0, last = N)
	Rope *tensor.RoPE // covering every position in Pos
	// KV cache (decoding; one sequence): K and V hold the keys and values
	// of positions 0..Start-1, rows of KVDim; the pass appends rows
	// Start..Start+N-1 and attends over all of them.
	K, V  []float32
	Start int
	// MLPRows bounds the rows of the MLP's (rows, FFN) buffers when no
	// activations are saved (0: all rows at once).
	MLPRows int
}

// Acts are the activations Forward saves for Backward, each over the N
// rows of the pass.
type Acts struct {
	XN1, Mid, XN2 []float32 // (N, Dim)
	Rstd1, Rstd2  []float32 // (N)
	Q, Att        []float32 // (N, QDim); q after RoPE
	K, V          []float32 // (N, KVDim); k after RoPE
	LSE           []float32 // (Heads, N) per sequence: sequence s at Heads·Seqs[s]
	Gate, Up      []float32 // (N, FFN)
	// H (N, FFN) = silu(Gate)·Up, scratch: Backward recomputes it from
	// Gate and Up (bit for bit Forward's), so the blocks of a model may
	// share one H, and hold two (N, FFN) activations each instead of three.
	H          []float32
	AttScratch []float32 // tensor.AttentionScratch of the longest sequence (scratch)
}

// NewActs allocates activations for passes of up to n rows whose longest
// sequence has maxT rows.
func NewActs(d Dims, n, maxT int) *Acts { return NewStackActs(d, 1, n, maxT)[0] }

// NewStackActs allocates the activations of layers blocks run one after
// another (a model's stack) for passes of up to n rows whose longest
// sequence has maxT rows: each block its own, but one H and one
// AttScratch, scratch that every block may share.
func NewStackActs(d Dims, layers, n, maxT int) []*Acts {
	h, att := make([]float32, n*d.FFN), make([]float32, tensor.AttentionScratch(maxT, d.HeadDim))
	D, Q, KV, F := d.Dim, d.QDim(), d.KVDim(), d.FFN
	acts := make([]*Acts, layers)
	for l := range acts {
		acts[l] = &Acts{
			XN1: make([]float32, n*D), Mid: make([]float32, n*D), XN2: make([]float32, n*D),
			Rstd1: make([]float32, n), Rstd2: make([]float32, n),
			Q: make([]float32, n*Q), Att: make([]float32, n*Q), K: make([]float32, n*KV), V: make([]float32, n*KV),
			LSE:  make([]float32, d.Heads*n),
			Gate: make([]float32, n*F), Up: make([]float32, n*F), H: h,
			AttScratch: att,
		}
	}
	return acts
}

// Scratch holds the buffers of an inference pass (no activations kept);
// they grow as needed and are reused across calls.
type Scratch struct {
	xn, q, k, v, att, lse, gate, up, attScratch, scores []float32
}

// Forward runs the block over the pass. Without acts it is an inference
// pass: out may be in (the residual stream updated in place), and s holds
// the buffers. With acts (training) every activation Backward needs is
// saved there, out must not overlap in, and the MLP is not split into
// rows.
//
//	in, out: (N, Dim)
func (b *Block) Forward(d Dims, p *Pass, in, out []float32, s *Scratch, a *Acts) {
	N, D, hd := p.N, d.Dim, d.HeadDim
	qd, kvd, F := d.QDim(), d.KVDim(), d.FFN
	var xn1, q, k, v, att, lse, mid, xn2 []float32
	var rstd1, rstd2, attScratch []float32
	if a != nil {
		xn1, q, k, v, att = a.XN1[:N*D], a.Q[:N*qd], a.K[:N*kvd], a.V[:N*kvd], a.Att[:N*qd]
		lse, mid, xn2 = a.LSE[:d.Heads*N], a.Mid[:N*D], a.XN2[:N*D]
		rstd1, rstd2, attScratch = a.Rstd1[:N], a.Rstd2[:N], a.AttScratch
	} else {
		s.xn, s.q, s.att = tensor.Grow(s.xn, N*D), tensor.Grow(s.q, N*qd), tensor.Grow(s.att, N*qd)
		xn1, q, att, xn2 = s.xn, s.q, s.att, s.xn
		if p.K == nil {
			s.k, s.v = tensor.Grow(s.k, N*kvd), tensor.Grow(s.v, N*kvd)
			k, v = s.k, s.v
		}
		maxT := 0
		for i := 1; i < len(p.Seqs); i++ {
			maxT = max(maxT, p.Seqs[i]-p.Seqs[i-1])
		}
		if p.K == nil {
			s.lse = tensor.Grow(s.lse, d.Heads*N)
			lse = s.lse
		}
		if p.Start == 0 {
			s.attScratch = tensor.Grow(s.attScratch, tensor.AttentionScratch(maxT, hd))
		} else {
			s.scores = tensor.Grow(s.scores, min(N, tensor.CachedAttentionRows)*(p.Start+N))
		}
		attScratch = s.attScratch
	}
	if p.K != nil {
		k, v = p.K[p.Start*kvd:(p.Start+N)*kvd], p.V[p.Start*kvd:(p.Start+N)*kvd]
	}

	// Attention sub-block.
	tensor.RMSNormForward(xn1, rstd1, in, b.AttnNorm, N, D, d.NormEps)
	b.WQ.Apply(q, xn1, b.BQ, N, D, qd)
	b.WK.Apply(k, xn1, b.BK, N, D, kvd)
	b.WV.Apply(v, xn1, b.BV, N, D, kvd)
	if b.QNorm != nil {
		if a != nil {
			panic("transformer.Block.Forward: per-head q/k norms (qwen3) cannot be trained")
		}
		tensor.RMSNormForward(q, nil, q, b.QNorm, N*d.Heads, hd, d.NormEps)
		tensor.RMSNormForward(k, nil, k, b.KNorm, N*d.KVHeads, hd, d.NormEps)
	}
	p.Rope.Forward(q, p.Pos[:N], N, d.Heads)
	p.Rope.Forward(k, p.Pos[:N], N, d.KVHeads)
	switch {
	case p.Start > 0:
		tensor.CachedAttention(att, q, p.K, p.V, s.scores, p.Start, N, d.Heads, d.KVHeads, hd)
	case p.K != nil: // the first pass of a cache: the blockwise kernel, as without one
		tensor.AttentionForward(att, nil, q, k, v, attScratch, N, d.Heads, d.KVHeads, hd)
	default:
		for i := 1; i < len(p.Seqs); i++ { // causal within each sequence only
			r0, r1 := p.Seqs[i-1], p.Seqs[i]
			tensor.AttentionForward(att[r0*qd:r1*qd], lse[d.Heads*r0:d.Heads*r1], q[r0*qd:r1*qd],
				k[r0*kvd:r1*kvd], v[r0*kvd:r1*kvd], attScratch, r1-r0, d.Heads, d.KVHeads, hd)
		}
	}
	if a == nil {
		// In place: out = in + att·WOᵀ (xn1 is free again).
		b.WO.Apply(xn1, att, nil, N, qd, D)
		if &out[0] != &in[0] {
			copy(out[:N*D], in[:N*D])
		}
		tensor.AddInPlace(out[:N*D], xn1)
		b.mlpRows(d, p, out[:N*D], s)
		return
	}
	b.WO.Apply(mid, att, nil, N, qd, D)
	tensor.AddInPlace(mid, in[:N*D])
	// MLP sub-block.
	tensor.RMSNormForward(xn2, rstd2, mid, b.MLPNorm, N, D, d.NormEps)
	gate, up, h := a.Gate[:N*F], a.Up[:N*F], a.H[:N*F]
	b.Gate.Apply(gate, xn2, nil, N, D, F)
	b.Up.Apply(up, xn2, nil, N, D, F)
	tensor.SwiGLUForward(h, gate, up)
	b.Down.Apply(out[:N*D], h, nil, N, F, D)
	tensor.AddInPlace(out[:N*D], mid)
}

// mlpRows is the inference MLP: x += down(silu(gate(xn))·up(xn)) with
// xn = RMSNorm(x), in chunks of MLPRows rows.
func (b *Block) mlpRows(d Dims, p *Pass, x []float32, s *Scratch) {
	N, D, F := p.N, d.Dim, d.FFN
	rows := N
	if p.MLPRows > 0 {
		rows = min(N, p.MLPRows)
	}
	s.gate, s.up = tensor.Grow(s.gate, rows*F), tensor.Grow(s.up, rows*F)
	xn := s.xn[:N*D]
	tensor.RMSNormForward(xn, nil, x, b.MLPNorm, N, D, d.NormEps)
	for r0 := 0; r0 < N; r0 += rows {
		n := min(rows, N-r0)
		in := xn[r0*D : (r0+n)*D]
		g, u := s.gate[:n*F], s.up[:n*F]
		b.Gate.Apply(g, in, nil, n, D, F)
		b.Up.Apply(u, in, nil, n, D, F)
		tensor.SwiGLUForward(g, g, u)
		// xn rows r0.. are consumed above, so they can take the output.
		b.Down.Apply(in, g, nil, n, F, D)
	}
	tensor.AddInPlace(x, xn)
}

// BackScratch holds Backward's temporaries for passes of up to n rows.
type BackScratch struct {
	dn, datt, dq, dk, dv, dh, dgate, dup []float32
}

// NewBackScratch allocates Backward's temporaries for n rows.
func NewBackScratch(d Dims, n int) *BackScratch {
	D, Q, KV, F := d.Dim, d.QDim(), d.KVDim(), d.FFN
	return &BackScratch{dn: make([]float32, n*D), datt: make([]float32, n*Q), dq: make([]float32, n*Q),
		dk: make([]float32, n*KV), dv: make([]float32, n*KV),
		dh: make([]float32, n*F), dgate: make([]float32, n*F), dup: make([]float32, n*F)}
}

// Backward propagates through the block of the last Forward with acts a:
// on entry dx holds ∂loss/∂out, on return ∂loss/∂in (the residual passes it
// through and each branch adds to it). Parameter gradients accumulate into
// g, whose Linear fields must be F32 (as must b's). in is the block's input
// of that Forward.
//
//	in, dx: (N, Dim)
func (b *Block) Backward(d Dims, p *Pass, g *Block, in []float32, a *Acts, dx []float32, s *BackScratch) {
	N, D, hd := p.N, d.Dim, d.HeadDim
	qd, kvd, F := d.QDim(), d.KVDim(), d.FFN
	w := func(l Linear) []float32 {
		f, ok := l.(F32)
		if !ok {
			panic(fmt.Sprintf("transformer.Block.Backward: weight of type %T, want F32", l))
		}
		return f
	}
	dx = dx[:N*D]
	dn := s.dn[:N*D]
	// MLP: out = mid + down(h); dx flows to mid unchanged.
	dh, dgate, dup := s.dh[:N*F], s.dgate[:N*F], s.dup[:N*F]
	clear(dh)
	h := a.H[:N*F]
	tensor.SwiGLUForward(h, a.Gate[:N*F], a.Up[:N*F]) // recomputed: H may be shared
	tensor.LinearBackward(dh, w(g.Down), nil, dx, h, w(b.Down), N, F, D)
	clear(dgate)
	clear(dup)
	tensor.SwiGLUBackward(dgate, dup, dh, a.Gate[:N*F], a.Up[:N*F])
	clear(dn)
	tensor.LinearBackward(dn, w(g.Gate), nil, dgate, a.XN2[:N*D], w(b.Gate), N, D, F)
	tensor.LinearBackward(dn, w(g.Up), nil, dup, a.XN2[:N*D], w(b.Up), N, D, F)
	tensor.RMSNormBackward(dx, g.MLPNorm, dn, a.Mid[:N*D], b.MLPNorm, a.Rstd2[:N], N, D)
	// Attention: mid = in + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))).
	datt := s.datt[:N*qd]
	clear(datt)
	tensor.LinearBackward(datt, w(g.WO), nil, dx, a.Att[:N*qd], w(b.WO), N, qd, D)
	dq, dk, dv := s.dq[:N*qd], s.dk[:N*kvd], s.dv[:N*kvd]
	clear(dq)
	clear(dk)
	clear(dv)
	for i := 1; i < len(p.Seqs); i++ {
		r0, r1 := p.Seqs[i-1], p.Seqs[i]
		tensor.AttentionBackward(dq[r0*qd:r1*qd], dk[r0*kvd:r1*kvd], dv[r0*kvd:r1*kvd], datt[r0*qd:r1*qd],
			a.Q[r0*qd:r1*qd], a.K[r0*kvd:r1*kvd], a.V[r0*kvd:r1*kvd], a.Att[r0*qd:r1*qd],
			a.LSE[d.Heads*r0:d.Heads*r1], a.AttScratch, r1-r0, d.Heads, d.KVHeads, hd)
	}
	p.Rope.Backward(dq, p.Pos[:N], N, d.Heads)
	p.Rope.Backward(dk, p.Pos[:N], N, d.KVHeads)
	clear(dn)
	tensor.LinearBackward(dn, w(g.WQ), g.BQ, dq, a.XN1[:N*D], w(b.WQ), N, D, qd)
	tensor.LinearBackward(dn, w(g.WK), g.BK, dk, a.XN1[:N*D], w(b.WK), N, D, kvd)
	tensor.LinearBackward(dn, w(g.WV), g.BV, dv, a.XN1[:N*D], w(b.WV), N, D, kvd)
	tensor.RMSNormBackward(dx, g.AttnNorm, dn, in[:N*D], b.AttnNorm, a.Rstd1[:N], N, D)
}
