package model

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"carryon/tensor"
	"carryon/transformer"
)

// FinalLayer asks Forward for the hidden states after the final norm: the
// LM head's input, which the carry-on consumes.
const FinalLayer = -1

// Base is a frozen base model ready to run. Its weights are float32 slices
// that, for F32 checkpoints, alias the memory-mapped files; Close unmaps
// them. Forward and Logits are safe for concurrent use.
type Base struct {
	Config      Config
	WeightsHash string // hex sha256 of the weight file bytes (shards in sorted name order)
	numerics    string // Numerics

	embed  []float32 // (Vocab, Dim); nil while embedQ holds it
	lmHead []float32 // (Vocab, Dim); aliases embed when tied; nil while headQ holds it
	// embedQ and headQ hold the embeddings and the LM head in their stored
	// format (F16, BF16, ggml blocks; see LoadOptions.Widen), or are nil.
	// Embeddings and LMHead widen them once on first use (wideOnce).
	embedQ, headQ *tensor.QuantMatrix
	wideOnce      sync.Once
	// int8Head: headQ is Q8_0 and multiplied with int8 activations
	// (LoadOptions.Int8); packWeights packs it into headQ8 where the CPU
	// has the packed kernel.
	int8Head  bool
	headQ8    *tensor.PackedQ8
	finalNorm []float32 // (Dim)
	layers    []layerWeights

	ropeMu sync.Mutex
	rope   *tensor.RoPE // grown on demand up to MaxPos

	closeMu sync.RWMutex // Forward holds it for reading; Close for writing
	closed  bool
	closers []func() error

	// packOnce runs packWeights before the first forward pass; everything
	// that reads the block matrices (forward, sessions, SaveHF) goes
	// through ready() first, so packWeights may change them.
	packOnce sync.Once
}

// ready packs the weights if that has not happened yet (see packWeights).
// Callers hold closeMu for reading.
// use holds b open for an operation named op (Close waits for it); it
// fails with ErrClosed once b is closed. Call release when done.
func (b *Base) use(op string) (release func(), err error) {
	b.closeMu.RLock()
	if b.closed {
		b.closeMu.RUnlock()
		return nil, fmt.Errorf("%s: %w", op, ErrClosed)
	}
	return b.closeMu.RUnlock, nil
}

func (b *Base) ready() { b.packOnce.Do(b.packWeights) }

// layerWeights are one transformer block's tensors, in HF layout ((out, in)
// matrices, rotate-half RoPE order of q/k rows).
type layerWeights struct {
	attnNorm []float32 // (Dim)
	wq       matrix    // (Heads·HeadDim, Dim)
	wk, wv   matrix    // (KVHeads·HeadDim, Dim)
	bq       []float32 // (Heads·HeadDim) or nil
	bk, bv   []float32 // (KVHeads·HeadDim) or nil
	wo       matrix    // (Dim, Heads·HeadDim)
	qNorm    []float32 // (HeadDim) or nil (qwen3 only)
	kNorm    []float32 // (HeadDim) or nil
	mlpNorm  []float32 // (Dim)
	gate, up matrix    // (FFN, Dim)
	down     matrix    // (Dim, FFN)
}

// matrix is a weight in nn.Linear layout (out, in), held as float32 (f),
// or, for a BF16 weight (unless LoadOptions.ExactBF16), as bf16 bit patterns
// (h, multiplied with tensor.GemmBF16's numerics). A float32 matrix
// of a base loaded from files is also packed once for tensor.GemmPacked (p,
// see Base.packWeights); f is then either the memory-mapped original, whose
// pages are released, or nil, and float32() unpacks p.
type matrix struct {
	f []float32
	h []uint16
	p *tensor.PackedB
	q *tensor.QuantMatrix // stored F16, BF16 or ggml blocks (tensor.GemmQuant)
	// int8: q is Q8_0 and is multiplied with int8 activations
	// (tensor.GemmQ8, LoadOptions.Int8), through q8p (tensor.GemmQ8Packed)
	// once packWeights has packed it.
	int8 bool
	q8p  *tensor.PackedQ8
}

func f32Matrix(f []float32) matrix { return matrix{f: f} }

// packedMinRows is the fewest rows for which tensor.Gemm takes the blocked
// path, where multiplying by a packed copy gives bitwise what LinearForward
// gives; below it Gemm streams the rows as dot products.
const packedMinRows = 9

// linear computes out = inp·Wᵀ + bias. A packed W always goes through its
// packed copy (so results do not depend on whether the original is still at
// hand), which for at least packedMinRows rows is bitwise what LinearForward
// gives (the same kernel adds the same products in the same order).
//
//	out:  (n, oc)
//	inp:  (n, ic)
//	bias: (oc) or nil
func (w matrix) Apply(out, inp, bias []float32, n, ic, oc int) {
	switch {
	case w.p != nil:
		tensor.GemmPacked(n, 1, inp, ic, w.p, 0, out, oc)
		addBias(out, bias, n, oc)
		return
	case w.q8p != nil:
		tensor.GemmQ8Packed(n, inp, ic, w.q8p, out, oc)
		addBias(out, bias, n, oc)
		return
	case w.q != nil && w.int8:
		tensor.GemmQ8(n, inp, ic, *w.q, out, oc)
		addBias(out, bias, n, oc)
		return
	case w.q != nil:
		tensor.GemmQuant(n, inp, ic, *w.q, out, oc)
		addBias(out, bias, n, oc)
		return
	case w.h == nil:
		tensor.LinearForward(out, inp, w.f, bias, n, ic, oc)
		return
	}
	tensor.GemmBF16(n, oc, ic, inp, ic, w.h, ic, out, oc)
	addBias(out, bias, n, oc)
}

// block is the layer as a transformer.Block, each matrix in the form the
// base holds it.
func (w *layerWeights) block() transformer.Block {
	return transformer.Block{AttnNorm: w.attnNorm, MLPNorm: w.mlpNorm, WQ: w.wq, WK: w.wk, WV: w.wv, WO: w.wo,
		BQ: w.bq, BK: w.bk, BV: w.bv, QNorm: w.qNorm, KNorm: w.kNorm, Gate: w.gate, Up: w.up, Down: w.down}
}

// f32Block is the layer as a trainable transformer.Block: its float32
// matrices (the weights of a base that is not packed).
func (w *layerWeights) f32Block() transformer.Block {
	return transformer.Block{AttnNorm: w.attnNorm, MLPNorm: w.mlpNorm,
		WQ: transformer.F32(w.wq.f), WK: transformer.F32(w.wk.f), WV: transformer.F32(w.wv.f), WO: transformer.F32(w.wo.f),
		BQ: w.bq, BK: w.bk, BV: w.bv, QNorm: w.qNorm, KNorm: w.kNorm,
		Gate: transformer.F32(w.gate.f), Up: transformer.F32(w.up.f), Down: transformer.F32(w.down.f)}
}

// dims are the sizes of the base's blocks.
func (c Config) dims() transformer.Dims {
	return transformer.Dims{Dim: c.Dim, Heads: c.Heads, KVHeads: c.KVHeads, HeadDim: c.HeadDim, FFN: c.FFN, NormEps: c.NormEps}
}

// addBias adds bias (oc, or nil) to every row of out (n, oc).
func addBias(out, bias []float32, n, oc int) {
	if bias != nil {
		for i := 0; i < n; i++ {
			tensor.AddInPlace(out[i*oc:(i+1)*oc], bias[:oc])
		}
	}
}

// maxPackedFloats caps the block matrices packWeights packs, float32 and
// bf16 each: the packed slab is anonymous memory of that many floats
// (about 1.4 GiB for Qwen2.5-0.5B in float32, 0.7 GiB in bf16) where the
// originals were page cache; bigger models keep packing per call.
const maxPackedFloats = 1 << 30 // 4 GiB

// packJob is one block matrix (out, in) = (oc, ic) for packWeights.
type packJob struct {
	w      *matrix
	oc, ic int
}

// packWeights packs every float32 block matrix once for tensor.GemmPacked,
// so that prefill skips re-packing (transposing) each weight on every call.
// It runs before the first forward pass (ready), and only for bases opened
// from files (LoadBase, LoadGGUF: they hold closers). Those never hand out
// their weights for writing, so a packed copy cannot go stale; a base made
// by NewRandomBase may be trained in place (BaseTrainer, InitTrainWeights)
// and is never packed.
//
// The packed copy replaces the original, so that resident memory stays at
// one copy of the weights: a memory-mapped original has its pages released
// (tensor.ReleasePages: they are read back from the file only if something
// reads f again, such as SaveHF); a heap copy (a converted or permuted
// tensor) is dropped.
func (b *Base) packWeights() {
	if len(b.closers) == 0 {
		return
	}
	b.packQ8()
	c := b.Config
	D, qd, kvd := c.Dim, c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	var jobs, halves []packJob
	size, halfSize := 0, 0
	for li := range b.layers {
		w := &b.layers[li]
		for _, j := range []packJob{{&w.wq, qd, D}, {&w.wk, kvd, D}, {&w.wv, kvd, D}, {&w.wo, D, qd},
			{&w.gate, c.FFN, D}, {&w.up, c.FFN, D}, {&w.down, D, c.FFN}} {
			switch {
			case j.w.f != nil:
				jobs = append(jobs, j)
				size += tensor.PackedSize(j.oc, j.ic)
			case j.w.h != nil && tensor.PacksBF16():
				halves = append(halves, j)
				halfSize += tensor.PackedBF16Floats(j.oc, j.ic)
			}
		}
	}
	if halfSize > 0 && halfSize <= maxPackedFloats {
		b.packBF16(halves, halfSize)
	}
	if size > maxPackedFloats {
		return
	}
	// One slab outside the Go heap (freed by Close): a heap of packed
	// weights would let as much garbage pile up between collections.
	slab, free := tensor.AllocFloats(size)
	b.closers = append(b.closers, free)
	for _, j := range jobs {
		n := tensor.PackedSize(j.oc, j.ic)
		j.w.p = tensor.PackBInto(slab[:n], true, j.oc, j.ic, j.w.f, j.ic)
		slab = slab[n:]
		if !tensor.ReleasePages(tensor.Float32Bytes(j.w.f)) {
			j.w.f = nil
		}
	}
}

// packBF16 packs the bf16 matrices (out, in) of jobs (BF16 weights unless
// LoadOptions.ExactBF16)
// once for the native bf16 kernel, or on CPUs without one for the float32
// kernels' widening variant (tensor.PackBBF16Bits: the values are kept
// exactly, read straight from the mapped file), so that prefill skips
// GemmBF16's packing (and widening) on every call, into one slab outside
// the Go heap of size floats (freed by Close); the mapped originals' pages
// are released, so resident memory stays at one copy. The products round the activations
// to bf16 for every row count, as tensor.GemmBF16 does on every path (and as
// llama.cpp does for BF16).
func (b *Base) packBF16(jobs []packJob, size int) {
	slab, free := tensor.AllocFloats(size)
	b.closers = append(b.closers, free)
	for _, j := range jobs {
		n := tensor.PackedBF16Floats(j.oc, j.ic)
		j.w.p = tensor.PackBBF16Bits(slab[:n:n], j.oc, j.ic, j.w.h, j.ic)
		slab = slab[n:]
		tensor.ReleasePages(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(j.w.h))), 2*len(j.w.h)))
	}
}

// packQ8 repacks the Q8_0 matrices multiplied in int8 (LoadOptions.Int8)
// for tensor.GemmQ8Packed, where the CPU has its vector kernel, into one
// slab outside the Go heap (freed by Close). The block matrices' mapped
// pages are released (SaveHF and float32 read them back from the file);
// a tied head's are not, since lookup reads the embedding rows.
func (b *Base) packQ8() {
	if !tensor.Q8PackedFast() {
		return
	}
	var ms []*matrix
	size := 0
	for li := range b.layers {
		w := &b.layers[li]
		for _, m := range []*matrix{&w.wq, &w.wk, &w.wv, &w.wo, &w.gate, &w.up, &w.down} {
			if m.int8 && m.q != nil {
				ms = append(ms, m)
				size += tensor.PackedQ8Size(m.q.Rows, m.q.Cols)
			}
		}
	}
	if b.int8Head {
		size += tensor.PackedQ8Size(b.headQ.Rows, b.headQ.Cols)
	}
	if size == 0 {
		return
	}
	slab, free := tensor.AllocFloats((size + 3) / 4)
	b.closers = append(b.closers, free)
	buf := tensor.Float32Bytes(slab)
	take := func(q *tensor.QuantMatrix) *tensor.PackedQ8 {
		n := tensor.PackedQ8Size(q.Rows, q.Cols)
		p := tensor.PackQ8Into(buf[:n], *q)
		buf = buf[n:]
		return p
	}
	for _, m := range ms {
		m.q8p = take(m.q)
		tensor.ReleasePages(m.q.Data)
	}
	if b.int8Head {
		b.headQ8 = take(b.headQ)
		if b.headQ != b.embedQ {
			tensor.ReleasePages(b.headQ.Data)
		}
	}
}

// float32 returns the weights (out, in) as float32 (a widened or unpacked
// copy where the matrix holds no float32 original).
func (w matrix) float32() []float32 {
	if w.f != nil {
		return w.f
	}
	if w.p != nil {
		out := make([]float32, w.p.N()*w.p.K())
		w.p.Unpack(true, out, w.p.K())
		return out
	}
	if w.q != nil {
		return widen(w.q)
	}
	out := make([]float32, len(w.h))
	for i, h := range w.h {
		out[i] = tensor.BF16ToF32(h)
	}
	return out
}

// ErrClosed is returned by Forward after Close.
var ErrClosed = errors.New("model: base is closed")

// Close releases the weight mappings. It waits for running forwards.
func (b *Base) Close() error {
	b.closeMu.Lock()
	defer b.closeMu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	for _, c := range b.closers {
		errs = append(errs, c())
	}
	b.closers = nil
	b.embed, b.lmHead, b.finalNorm, b.layers, b.embedQ, b.headQ, b.headQ8 = nil, nil, nil, nil, nil, nil, nil
	return errors.Join(errs...)
}

// LMHead returns the output projection W_pred: (Vocab, Dim). When the
// embeddings are tied it is the embedding matrix. A head stored as F16,
// BF16 or quantized is widened to float32 on the first call (Vocab·Dim
// floats, kept until Close). Callers must not modify it.
func (b *Base) LMHead() []float32 {
	b.widenOnce()
	return b.lmHead
}

// Embeddings returns the token embedding matrix (Vocab, Dim), widened on
// the first call like LMHead. Callers must not modify it.
func (b *Base) Embeddings() []float32 {
	b.widenOnce()
	return b.embed
}

// widenOnce makes float32 copies of embeddings and head kept in their
// stored format.
func (b *Base) widenOnce() {
	b.wideOnce.Do(func() {
		if b.embedQ != nil && b.embed == nil {
			b.embed = widen(b.embedQ)
		}
		switch {
		case b.headQ != nil && b.headQ == b.embedQ:
			b.lmHead = b.embed
		case b.headQ != nil && b.lmHead == nil:
			b.lmHead = widen(b.headQ)
		}
	})
}

// widen decodes a whole stored matrix to float32.
func widen(q *tensor.QuantMatrix) []float32 {
	out := make([]float32, q.Rows*q.Cols)
	// Rows are whole runs of blocks one after another: one call decodes all.
	if err := tensor.DequantizeGGML(out, q.Data, q.Type); err != nil {
		panic("model: " + err.Error()) // NewQuantMatrix checked the sizes
	}
	return out
}

// lookup writes the embeddings of ids into x (len(ids), Dim).
func (b *Base) lookup(x []float32, ids []int32) {
	D := b.Config.Dim
	if b.embedQ == nil { // (a widened copy, if any, is only for Embeddings' callers)
		tensor.EmbeddingForward(x, b.embed, ids, D)
		return
	}
	q := b.embedQ
	rb := q.Bytes() / q.Rows
	for t, id := range ids {
		if err := tensor.DequantizeGGML(x[t*D:(t+1)*D], q.Data[int(id)*rb:(int(id)+1)*rb], q.Type); err != nil {
			panic("model: " + err.Error())
		}
	}
}

// LogitsInto computes logits = hidden·W_predᵀ into out, with the head in whichever
// form the base holds it.
//
//	out:    (T, Vocab)
//	hidden: (T, Dim)
func (b *Base) LogitsInto(out, hidden []float32, T int) {
	c := b.Config
	if b.int8Head {
		b.closeMu.RLock()
		b.ready()
		b.closeMu.RUnlock()
		if b.headQ8 != nil {
			tensor.GemmQ8Packed(T, hidden, c.Dim, b.headQ8, out, c.Vocab)
		} else {
			tensor.GemmQ8(T, hidden, c.Dim, *b.headQ, out, c.Vocab)
		}
		return
	}
	if b.headQ != nil {
		tensor.GemmQuant(T, hidden, c.Dim, *b.headQ, out, c.Vocab)
		return
	}
	tensor.LinearForward(out, hidden, b.lmHead, nil, T, c.Dim, c.Vocab)
}

// Logits projects final hidden states through the LM head. It must not be
// called after Close.
//
//	hidden: (T, Dim), as returned by Forward for FinalLayer
//	result: (T, Vocab)
func (b *Base) Logits(hidden []float32, T int) []float32 {
	c := b.Config
	if len(hidden) < T*c.Dim {
		panic(fmt.Sprintf("model.Logits: hidden has %d floats, want T·Dim = %d", len(hidden), T*c.Dim))
	}
	out := make([]float32, T*c.Vocab)
	b.LogitsInto(out, hidden, T)
	return out
}

// ropeFor returns RoPE tables covering positions [0, T).
func (b *Base) ropeFor(T int) *tensor.RoPE {
	b.ropeMu.Lock()
	defer b.ropeMu.Unlock()
	if b.rope == nil || b.rope.MaxPos < T {
		c := b.Config
		n := min(max(T, 2*ropeLen(b.rope), 1024), c.MaxPos)
		b.rope = tensor.NewRoPE(c.HeadDim, n, c.RopeTheta, c.RopeScaling, false)
	}
	return b.rope
}

func ropeLen(r *tensor.RoPE) int {
	if r == nil {
		return 0
	}
	return r.MaxPos
}

// Forward runs one sequence at positions 0..T-1 and returns, for each entry
// of layers, the hidden states (T, Dim): FinalLayer gives the output of the
// final norm; k in [0, Layers] gives the residual stream after k blocks
// (0 = the token embeddings).
func (b *Base) Forward(ids []int32, layers []int) ([][]float32, error) {
	out, err := b.ForwardBatch([][]int32{ids}, layers)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// MaxBatchTokens is how many tokens ForwardBatch runs in one pass; longer
// batches are split between sequences (a single longer sequence runs alone).
const MaxBatchTokens = 2048

// ForwardBatch runs several sequences, which may differ in length, and
// returns Forward's result per sequence. The sequences are concatenated
// without padding (a variable-length batch): every weight product runs once
// over all their tokens, which is what makes a batch of short sequences
// fast, while RoPE positions restart at 0 and attention stays causal within
// each sequence, so no token sees another sequence. Each result equals the
// one Forward gives for the sequence alone up to the order of float32
// additions (about 1e-7 relative).
func (b *Base) ForwardBatch(seqs [][]int32, layers []int) ([][][]float32, error) {
	release, err := b.use("model.Forward")
	if err != nil {
		return nil, err
	}
	defer release()
	if len(seqs) == 0 {
		return nil, errors.New("model.ForwardBatch: no sequences")
	}
	for i, ids := range seqs {
		if err := b.checkInput(ids, layers); err != nil {
			if len(seqs) > 1 {
				return nil, fmt.Errorf("model.ForwardBatch: sequence %d: %w", i, err)
			}
			return nil, err
		}
	}
	out := make([][][]float32, 0, len(seqs))
	for _, g := range TokenBatches(seqs, MaxBatchTokens) {
		b.ready()
		out = append(out, b.forward(g, layers)...)
	}
	return out, nil
}

// PackBatch lays seqs one after another for a batched pass: their token
// ids, each token's position in its sequence, the row offsets (sequence s
// has rows [off[s], off[s+1])) and the longest sequence's length.
func PackBatch(seqs [][]int32) (ids, pos []int32, off []int, maxT int) {
	off = make([]int, len(seqs)+1)
	for s, sq := range seqs {
		off[s+1] = off[s] + len(sq)
		maxT = max(maxT, len(sq))
	}
	T := off[len(seqs)]
	ids, pos = make([]int32, 0, T), make([]int32, 0, T)
	for _, sq := range seqs {
		ids = append(ids, sq...)
		for i := range sq {
			pos = append(pos, int32(i))
		}
	}
	return ids, pos, off, maxT
}

// TokenBatches splits seqs, in order, into runs of at most maxTokens
// tokens in all (a longer sequence makes a run of its own): the passes of
// a batched forward. The runs are subslices of seqs.
func TokenBatches(seqs [][]int32, maxTokens int) [][][]int32 {
	var runs [][][]int32
	for s0 := 0; s0 < len(seqs); {
		s1, n := s0, 0
		for s1 < len(seqs) && (s1 == s0 || n+len(seqs[s1]) <= maxTokens) {
			n += len(seqs[s1])
			s1++
		}
		runs = append(runs, seqs[s0:s1])
		s0 = s1
	}
	return runs
}

func (b *Base) checkInput(ids []int32, layers []int) error {
	c := b.Config
	if len(ids) == 0 {
		return errors.New("model.Forward: empty sequence")
	}
	if len(ids) > c.MaxPos {
		return fmt.Errorf("model.Forward: %d tokens exceed max_position_embeddings %d", len(ids), c.MaxPos)
	}
	for i, id := range ids {
		if id < 0 || int(id) >= c.Vocab {
			return fmt.Errorf("model.Forward: token %d at position %d is outside the vocabulary [0, %d)", id, i, c.Vocab)
		}
	}
	if len(layers) == 0 {
		return errors.New("model.Forward: no layers requested")
	}
	for _, l := range layers {
		if l != FinalLayer && (l < 0 || l > c.Layers) {
			return fmt.Errorf("model.Forward: layer %d: want FinalLayer (-1) or 0..%d", l, c.Layers)
		}
	}
	return nil
}

// mlpRows is how many positions the MLP processes at once, which bounds the
// (rows, FFN) gate/up buffers for long sequences.
const mlpRows = 512

// forward runs a variable-length batch; it assumes checked inputs and
// ready weights.
func (b *Base) forward(seqs [][]int32, layers []int) [][][]float32 {
	c := b.Config
	D := c.Dim
	// Token rows of all sequences, one after another: sequence s has rows
	// [off[s], off[s+1]).
	ids, pos, off, maxT := PackBatch(seqs)
	T := len(ids)
	x := make([]float32, T*D) // (T, D) residual stream
	pass := &transformer.Pass{N: T, Pos: pos, Seqs: off, Rope: b.ropeFor(maxT), MLPRows: mlpRows}
	var scratch transformer.Scratch

	out := make([][][]float32, len(seqs))
	for s := range out {
		out[s] = make([][]float32, len(layers))
	}
	save := func(k int, h []float32) {
		for i, l := range layers {
			if l == k {
				for s := range seqs {
					out[s][i] = append([]float32(nil), h[off[s]*D:off[s+1]*D]...)
				}
			}
		}
	}
	b.lookup(x, ids)
	save(0, x)
	dims := c.dims()
	for li := range b.layers {
		blk := b.layers[li].block()
		blk.Forward(dims, pass, x, x, &scratch, nil)
		save(li+1, x)
	}
	for i, l := range layers {
		if l == FinalLayer {
			for s := range seqs {
				r0, r1 := off[s], off[s+1]
				h := make([]float32, (r1-r0)*D)
				tensor.RMSNormForward(h, nil, x[r0*D:r1*D], b.finalNorm, r1-r0, D, c.NormEps)
				out[s][i] = h
			}
		}
	}
	return out
}
