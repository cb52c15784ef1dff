package model

// Incremental decoding: KV-cached sessions of the base and of the carry-on,
// sampling, and Generate (base + carry-on stages, DESIGN.md §2 and §6.6).

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	"carryon/tensor"
)

// attnRowBlock is how many query rows cachedAttention scores at once, which
// bounds its scores buffer to attnRowBlock·positions floats.
const attnRowBlock = 64

// cachedAttention is causal attention of T new queries at positions
// start..start+T-1 over the cached keys and values of positions
// 0..start+T-1. scores must hold min(T, attnRowBlock)·(start+T) floats.
//
//	out: (T, nHead·hd)
//	q:   (T, nHead·hd), after RoPE
//	kc:  (≥ start+T, nKV·hd) keys after RoPE, row-major
//	vc:  (≥ start+T, nKV·hd)
func cachedAttention(out, q, kc, vc, scores []float32, start, T, nHead, nKV, hd int) {
	group := nHead / nKV
	qd, kvd := nHead*hd, nKV*hd
	scale := float32(1 / math.Sqrt(float64(hd)))
	for h := 0; h < nHead; h++ {
		kvh := h / group
		for r0 := 0; r0 < T; r0 += attnRowBlock {
			r1 := min(r0+attnRowBlock, T)
			nr, P := r1-r0, start+r1 // keys the block's last row sees
			s := scores[:nr*P]
			tensor.Gemm(false, true, nr, P, hd, scale, q[r0*qd+h*hd:], qd, kc[kvh*hd:], kvd, 0, s, P)
			for r := 0; r < nr; r++ {
				row := s[r*P : (r+1)*P]
				valid := start + r0 + r + 1
				mx := row[0]
				for _, v := range row[:valid] {
					mx = max(mx, v)
				}
				var sum float64
				for j, v := range row[:valid] {
					e := math.Exp(float64(v - mx))
					row[j] = float32(e)
					sum += e
				}
				inv := float32(1 / sum)
				for j := range row[:valid] {
					row[j] *= inv
				}
				clear(row[valid:])
			}
			tensor.Gemm(false, false, nr, hd, P, 1, s, P, vc[kvh*hd:], kvd, 0, out[r0*qd+h*hd:], qd)
		}
	}
}

// grow returns buf resized to n, reallocating only when it is too small.
func grow(buf []float32, n int) []float32 {
	if cap(buf) < n {
		return make([]float32, n)
	}
	return buf[:n]
}

// Session decodes one sequence incrementally with a key/value cache: Prefill
// appends a run of tokens (the prompt), Step one token. Both return, for each
// layer the session was made for (numbered as in Forward), the hidden states
// of the new positions, equal to Forward's rows for those positions up to
// float32 rounding. A Session belongs to one goroutine at a time.
type Session struct {
	b      *Base
	layers []int
	maxLen int
	n      int // positions cached
	rope   *tensor.RoPE
	kc, vc [][]float32 // per block: (maxLen, KVHeads·hd)

	// scratch, grown on demand
	x, xn, q, att, gate, up, scores, attScratch []float32
}

// NewSession makes a session for sequences of up to maxLen positions
// (capped at the base's MaxPos) returning the given layers (FinalLayer, or
// 0..Layers as in Forward). The cache takes 2·Layers·maxLen·KVHeads·HeadDim
// floats, allocated here.
func (b *Base) NewSession(maxLen int, layers []int) (*Session, error) {
	c := b.Config
	if maxLen < 1 {
		return nil, fmt.Errorf("model.NewSession: maxLen %d, want >= 1", maxLen)
	}
	maxLen = min(maxLen, c.MaxPos)
	if err := b.checkInput([]int32{0}, layers); err != nil {
		return nil, fmt.Errorf("model.NewSession: %w", err)
	}
	if n := int64(2) * int64(c.Layers) * int64(maxLen) * int64(c.KVHeads*c.HeadDim); n > 1<<32 {
		return nil, fmt.Errorf("model.NewSession: a cache of %d positions needs %d floats, over the cap of 2^32", maxLen, n)
	}
	s := &Session{b: b, layers: append([]int(nil), layers...), maxLen: maxLen, rope: b.ropeFor(maxLen)}
	kvd := c.KVHeads * c.HeadDim
	s.kc, s.vc = make([][]float32, c.Layers), make([][]float32, c.Layers)
	for l := range s.kc {
		s.kc[l], s.vc[l] = make([]float32, maxLen*kvd), make([]float32, maxLen*kvd)
	}
	return s, nil
}

// Len returns the number of positions in the cache.
func (s *Session) Len() int { return s.n }

// MaxLen returns the longest sequence the session holds.
func (s *Session) MaxLen() int { return s.maxLen }

// Reset empties the cache, keeping its memory.
func (s *Session) Reset() { s.n = 0 }

// Prefill appends ids at positions Len()..Len()+len(ids)-1 and returns, per
// layer of the session, their hidden states (len(ids), Dim).
func (s *Session) Prefill(ids []int32) ([][]float32, error) {
	b := s.b
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed {
		return nil, fmt.Errorf("model.Session.Prefill: %w", ErrClosed)
	}
	if len(ids) == 0 {
		return nil, errors.New("model.Session.Prefill: no tokens")
	}
	if s.n+len(ids) > s.maxLen {
		return nil, fmt.Errorf("model.Session.Prefill: %d + %d positions exceed the session's %d", s.n, len(ids), s.maxLen)
	}
	b.ready()
	for i, id := range ids {
		if id < 0 || int(id) >= b.Config.Vocab {
			return nil, fmt.Errorf("model.Session.Prefill: token %d at position %d is outside the vocabulary [0, %d)", id, s.n+i, b.Config.Vocab)
		}
	}
	out := s.extend(ids)
	s.n += len(ids)
	return out, nil
}

// Step appends one token and returns, per layer of the session, its hidden
// state (Dim).
func (s *Session) Step(id int32) ([][]float32, error) {
	out, err := s.Prefill([]int32{id})
	if err != nil {
		return nil, fmt.Errorf("model.Session.Step: %w", err)
	}
	return out, nil
}

// extend runs the blocks over T new tokens (checked) at positions s.n.. and
// fills their keys and values into the cache. It mirrors Base.forward.
func (s *Session) extend(ids []int32) [][]float32 {
	b, c := s.b, s.b.Config
	T, D, hd, start := len(ids), c.Dim, c.HeadDim, s.n
	qd, kvd := c.Heads*hd, c.KVHeads*hd
	pos := make([]int32, T)
	for i := range pos {
		pos[i] = int32(start + i)
	}
	s.x, s.xn = grow(s.x, T*D), grow(s.xn, T*D)
	s.q, s.att = grow(s.q, T*qd), grow(s.att, T*qd)
	rows := min(T, mlpRows)
	s.gate, s.up = grow(s.gate, rows*c.FFN), grow(s.up, rows*c.FFN)
	x, xn, q, att := s.x, s.xn, s.q, s.att
	if start == 0 {
		s.attScratch = grow(s.attScratch, tensor.AttentionScratch(T, hd))
	} else {
		s.scores = grow(s.scores, min(T, attnRowBlock)*(start+T))
	}

	out := make([][]float32, len(s.layers))
	save := func(k int) {
		for i, l := range s.layers {
			if l == k {
				out[i] = append([]float32(nil), x...)
			}
		}
	}
	b.lookup(x, ids)
	save(0)
	for li := range b.layers {
		w := &b.layers[li]
		k := s.kc[li][start*kvd : (start+T)*kvd]
		v := s.vc[li][start*kvd : (start+T)*kvd]
		tensor.RMSNormForward(xn, nil, x, w.attnNorm, T, D, c.NormEps)
		w.wq.linear(q, xn, w.bq, T, D, qd)
		w.wk.linear(k, xn, w.bk, T, D, kvd)
		w.wv.linear(v, xn, w.bv, T, D, kvd)
		if w.qNorm != nil {
			tensor.RMSNormForward(q, nil, q, w.qNorm, T*c.Heads, hd, c.NormEps)
			tensor.RMSNormForward(k, nil, k, w.kNorm, T*c.KVHeads, hd, c.NormEps)
		}
		s.rope.Forward(q, pos, T, c.Heads)
		s.rope.Forward(k, pos, T, c.KVHeads)
		if start == 0 { // the whole sequence: the blockwise kernel Forward uses
			tensor.AttentionForward(att, nil, q, k, v, s.attScratch, T, c.Heads, c.KVHeads, hd)
		} else {
			cachedAttention(att, q, s.kc[li], s.vc[li], s.scores, start, T, c.Heads, c.KVHeads, hd)
		}
		w.wo.linear(xn, att, nil, T, qd, D)
		tensor.AddInPlace(x, xn)
		tensor.RMSNormForward(xn, nil, x, w.mlpNorm, T, D, c.NormEps)
		for r0 := 0; r0 < T; r0 += rows {
			n := min(rows, T-r0)
			in := xn[r0*D : (r0+n)*D]
			g, u := s.gate[:n*c.FFN], s.up[:n*c.FFN]
			w.gate.linear(g, in, nil, n, D, c.FFN)
			w.up.linear(u, in, nil, n, D, c.FFN)
			tensor.SwiGLUForward(g, g, u)
			w.down.linear(in, g, nil, n, c.FFN, D)
		}
		tensor.AddInPlace(x, xn)
		save(li + 1)
	}
	for i, l := range s.layers {
		if l == FinalLayer {
			out[i] = make([]float32, T*D)
			tensor.RMSNormForward(out[i], nil, x, b.finalNorm, T, D, c.NormEps)
		}
	}
	return out
}

// CarryOnSession runs a carry-on incrementally with its own key/value cache
// over its trunk, for one sequence. A CarryOnSession belongs to one
// goroutine at a time.
type CarryOnSession struct {
	c      *CarryOn
	maxLen int
	n      int
	rope   *tensor.RoPE
	kc, vc [][]float32 // per block: (maxLen, Width)

	// scratch, grown on demand
	r, an, q, att, mid, mn, ga, ua, h, delta, gate, y, scores, attScratch []float32
}

// NewSession makes an incremental session for sequences of up to maxLen
// positions. maxLen may exceed Config.MaxSeq (RoPE has no learned limit).
func (c *CarryOn) NewSession(maxLen int) (*CarryOnSession, error) {
	if maxLen < 1 || maxLen > coMaxSeq {
		return nil, fmt.Errorf("model.CarryOn.NewSession: maxLen %d out of range [1, %d]", maxLen, coMaxSeq)
	}
	cfg := c.Config
	if n := int64(2) * int64(cfg.Layers) * int64(maxLen) * int64(cfg.Width); n > 1<<32 {
		return nil, fmt.Errorf("model.CarryOn.NewSession: a cache of %d positions needs %d floats, over the cap of 2^32", maxLen, n)
	}
	s := &CarryOnSession{c: c, maxLen: maxLen, rope: tensor.NewRoPE(cfg.HeadDim(), maxLen, cfg.RopeTheta, nil, false)}
	s.kc, s.vc = make([][]float32, cfg.Layers), make([][]float32, cfg.Layers)
	for l := range s.kc {
		s.kc[l], s.vc[l] = make([]float32, maxLen*cfg.Width), make([]float32, maxLen*cfg.Width)
	}
	return s, nil
}

// Len returns the number of positions in the cache.
func (s *CarryOnSession) Len() int { return s.n }

// Reset empties the cache, keeping its memory.
func (s *CarryOnSession) Reset() { s.n = 0 }

// Prefill appends T positions with sources[i]: (T, Dim_i) and returns their
// outputs y = x̂ + α·g⊙Δx: (T, D), a window of the session valid until its
// next call. Rows equal CarryOn.Forward's rows for the same positions up to
// float32 rounding.
func (s *CarryOnSession) Prefill(sources [][]float32, T int, alpha float32) ([]float32, error) {
	cfg := s.c.Config
	if T < 1 {
		return nil, fmt.Errorf("model.CarryOnSession.Prefill: T = %d, want >= 1", T)
	}
	if s.n+T > s.maxLen {
		return nil, fmt.Errorf("model.CarryOnSession.Prefill: %d + %d positions exceed the session's %d", s.n, T, s.maxLen)
	}
	if len(sources) != len(cfg.Sources) {
		return nil, fmt.Errorf("model.CarryOnSession.Prefill: %d sources, the carry-on has %d", len(sources), len(cfg.Sources))
	}
	for i, src := range cfg.Sources {
		if len(sources[i]) < T*src.Dim {
			return nil, fmt.Errorf("model.CarryOnSession.Prefill: source %d (%s) has %d values, want T·Dim = %d", i, src.Name, len(sources[i]), T*src.Dim)
		}
	}
	y := s.extend(sources, T, alpha)
	s.n += T
	return y, nil
}

// Step appends one position (sources[i]: (Dim_i)) and returns its y: (D).
func (s *CarryOnSession) Step(sources [][]float32, alpha float32) ([]float32, error) {
	y, err := s.Prefill(sources, 1, alpha)
	if err != nil {
		return nil, fmt.Errorf("model.CarryOnSession.Step: %w", err)
	}
	return y, nil
}

// extend mirrors CarryOn.Forward for T new positions at s.n...
func (s *CarryOnSession) extend(sources [][]float32, T int, alpha float32) []float32 {
	c, cfg, start := s.c, s.c.Config, s.n
	W, F, D, H, hd := cfg.Width, cfg.FFN, cfg.D(), cfg.Heads, cfg.HeadDim()
	TW, TF, TD := T*W, T*F, T*D
	pos := make([]int32, T)
	for i := range pos {
		pos[i] = int32(start + i)
	}
	s.r, s.an, s.q, s.att, s.mid, s.mn = grow(s.r, TW), grow(s.an, TW), grow(s.q, TW), grow(s.att, TW), grow(s.mid, TW), grow(s.mn, TW)
	s.ga, s.ua = grow(s.ga, TF), grow(s.ua, TF)
	s.h, s.delta, s.gate, s.y = grow(s.h, TW), grow(s.delta, TD), grow(s.gate, TD), grow(s.y, TD)
	if start == 0 {
		s.attScratch = grow(s.attScratch, tensor.AttentionScratch(T, hd))
	} else {
		s.scores = grow(s.scores, min(T, attnRowBlock)*(start+T))
	}
	r := s.r
	for i, src := range cfg.Sources {
		beta := float32(1)
		if i == 0 {
			beta = 0
		}
		tensor.Gemm(false, true, T, W, src.Dim, 1, sources[i], src.Dim, c.Proj[i], src.Dim, beta, r, W)
	}
	for t := 0; t < T; t++ {
		row := r[t*W : (t+1)*W]
		for i := range cfg.Sources {
			for j, b := range c.ProjBias[i] {
				row[j] += b
			}
		}
	}
	for l := range c.Blocks {
		b := &c.Blocks[l]
		k, v := s.kc[l][start*W:(start+T)*W], s.vc[l][start*W:(start+T)*W]
		tensor.RMSNormForward(s.an, nil, r, b.AttnNorm, T, W, cfg.NormEps)
		tensor.LinearForward(s.q, s.an, b.WQ, nil, T, W, W)
		tensor.LinearForward(k, s.an, b.WK, nil, T, W, W)
		tensor.LinearForward(v, s.an, b.WV, nil, T, W, W)
		s.rope.Forward(s.q, pos, T, H)
		s.rope.Forward(k, pos, T, H)
		if start == 0 {
			tensor.AttentionForward(s.att, nil, s.q, k, v, s.attScratch, T, H, H, hd)
		} else {
			cachedAttention(s.att, s.q, s.kc[l], s.vc[l], s.scores, start, T, H, H, hd)
		}
		tensor.LinearForward(s.mid, s.att, b.WO, nil, T, W, W)
		tensor.AddInPlace(s.mid, r)
		tensor.RMSNormForward(s.mn, nil, s.mid, b.MLPNorm, T, W, cfg.NormEps)
		tensor.LinearForward(s.ga, s.mn, b.WGate, nil, T, W, F)
		tensor.LinearForward(s.ua, s.mn, b.WUp, nil, T, W, F)
		tensor.SwiGLUForward(s.ga, s.ga, s.ua)
		tensor.LinearForward(r, s.ga, b.WDown, nil, T, F, W)
		tensor.AddInPlace(r, s.mid)
	}
	tensor.RMSNormForward(s.h, nil, r, c.FinalNorm, T, W, cfg.NormEps)
	tensor.LinearForward(s.delta, s.h, c.Delta, nil, T, W, D)
	tensor.LinearForward(s.gate, s.h, c.Gate, c.GateBias, T, W, D)
	tensor.SigmoidForward(s.gate, s.gate)
	x, y := sources[0][:TD], s.y[:TD]
	for i := range y {
		y[i] = x[i] + alpha*(s.gate[i]*s.delta[i])
	}
	return y
}

// Sampler picks the next token from logits: greedy (argmax) at temperature
// 0, else a draw from softmax(logits/temperature) restricted to the TopK
// largest logits (0 = all), from a seeded stream.
type Sampler struct {
	Temperature float64
	TopK        int
	rng         *rand.Rand
	cand        candHeap
	probs       []float64
}

// NewSampler makes a sampler; equal arguments give equal draws.
func NewSampler(temperature float64, topK int, seed uint64) (*Sampler, error) {
	if !(temperature >= 0) || math.IsInf(temperature, 0) {
		return nil, fmt.Errorf("model.NewSampler: temperature %v, want a finite value >= 0", temperature)
	}
	if topK < 0 {
		return nil, fmt.Errorf("model.NewSampler: top-k %d, want >= 0", topK)
	}
	return &Sampler{Temperature: temperature, TopK: topK, rng: rand.New(rand.NewPCG(seed, 0x73616d706c65))}, nil
}

// Argmax returns the index of the largest value, the first on ties; NaNs
// never win. It returns 0 for an all-NaN input.
func Argmax(x []float32) int32 {
	best, bi := float32(math.Inf(-1)), -1
	for i, v := range x {
		if v > best || (bi < 0 && v == best) {
			best, bi = v, i
		}
	}
	return int32(max(bi, 0))
}

// cand is a candidate token.
type cand struct {
	id    int32
	logit float32
}

// candHeap is a min-heap on logit (ties: the larger id is smaller, so the
// smallest id survives), holding the top-k candidates.
type candHeap []cand

func (h candHeap) Len() int { return len(h) }
func (h candHeap) Less(i, j int) bool {
	if h[i].logit != h[j].logit {
		return h[i].logit < h[j].logit
	}
	return h[i].id > h[j].id
}
func (h candHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *candHeap) Push(x any)   { *h = append(*h, x.(cand)) }
func (h *candHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Sample returns the next token for logits (Vocab).
func (s *Sampler) Sample(logits []float32) int32 {
	if s.Temperature == 0 || s.TopK == 1 {
		return Argmax(logits)
	}
	k := s.TopK
	if k == 0 || k > len(logits) {
		k = len(logits)
	}
	h := s.cand[:0]
	for i, v := range logits {
		if v != v { // NaN: never a candidate
			continue
		}
		switch {
		case len(h) < k:
			heap.Push(&h, cand{int32(i), v})
		case v > h[0].logit:
			h[0] = cand{int32(i), v}
			heap.Fix(&h, 0)
		}
	}
	s.cand = h
	if len(h) == 0 {
		return 0
	}
	mx := float32(math.Inf(-1))
	for _, c := range h {
		mx = max(mx, c.logit)
	}
	if math.IsInf(float64(mx), -1) {
		return Argmax(logits)
	}
	if cap(s.probs) < len(h) {
		s.probs = make([]float64, len(h))
	}
	p := s.probs[:len(h)]
	var sum float64
	for i, c := range h {
		p[i] = math.Exp(float64(c.logit-mx) / s.Temperature)
		sum += p[i]
	}
	u := s.rng.Float64() * sum
	for i, c := range h {
		u -= p[i]
		if u < 0 {
			return c.id
		}
	}
	return h[len(h)-1].id // rounding left u at >= 0
}

// GenerateOptions configures Generate.
type GenerateOptions struct {
	MaxTokens   int     // new tokens at most; 0 means 128
	Temperature float64 // 0: greedy
	TopK        int     // sample among the k largest logits; 0: all
	Seed        uint64  // of the sampling stream
	// Stop lists extra token ids that end generation (the tokenizer's and
	// the base's EOS always do).
	Stop []int32
	// Bridge, when not "", round-trips every base hidden state through that
	// codec (tensor.ParseCodec) before the carry-on, as in training.
	Bridge string
	// OnToken, when set, sees each generated token as it is chosen
	// (stop tokens included); returning false stops generation.
	OnToken func(id int32) bool
}

// Generation is the result of Generate.
type Generation struct {
	Prompt []int32 // the prompt's tokens (BOS included)
	Tokens []int32 // generated tokens, without the stop token
	Text   string  // Tokens decoded
	Stop   bool    // ended on a stop token (else on MaxTokens or OnToken)
}

// Generate runs base + carry-on stages on prompt: BOS (when the tokenizer
// has one) and the prompt's tokens, as the data set formats them, then up
// to MaxTokens sampled tokens. Each stage is a boosting stage applied in
// order (DESIGN.md §2): stage i takes the previous stage's output as its
// primary source x̂ (stage 0 the base's final hidden state) and its other
// sources ("layer:k") from the base, and outputs y_i = y_{i-1} + α·g⊙Δx;
// the logits are W_pred·y_last. alpha scales every stage; with no stages
// (or alpha 0) this is the base alone.
func Generate(b *Base, tok Tokenizer, stages []*CarryOn, alpha float32, prompt string, opt GenerateOptions) (*Generation, error) {
	var ids []int32
	if bos := tok.BOS(); bos >= 0 {
		ids = append(ids, bos)
	}
	ids = append(ids, tok.Encode(prompt)...)
	if len(ids) == 0 {
		return nil, errors.New("model.Generate: empty prompt")
	}
	opt.Stop = append(append([]int32(nil), opt.Stop...), tok.EOS())
	out, stopped, err := GenerateIDs(b, stages, alpha, ids, opt)
	if err != nil {
		return nil, err
	}
	return &Generation{Prompt: ids, Tokens: out, Text: tok.Decode(out), Stop: stopped}, nil
}

// stageLayer maps a carry-on source name to a base layer.
func stageLayer(name string, layers int) (int, error) {
	if name == "final" {
		return FinalLayer, nil
	}
	if k, ok := strings.CutPrefix(name, "layer:"); ok {
		if n, err := strconv.Atoi(k); err == nil && n >= 0 && n <= layers {
			return n, nil
		}
	}
	return 0, fmt.Errorf("source %q is not one this base provides (final, layer:0..%d)", name, layers)
}

// StageLayers checks that carry-on stages fit the base and returns the base
// layers they read (FinalLayer first, then the shortcuts) and, per stage,
// the index into layers of each of its sources. Stage i's source 0 is the
// final hidden state (replaced by stage i-1's output when i > 0).
func StageLayers(b *Base, stages []*CarryOn) (layers []int, srcIdx [][]int, err error) {
	c := b.Config
	layers = []int{FinalLayer}
	srcIdx = make([][]int, len(stages))
	for i, st := range stages {
		sc := st.Config
		if sc.Vocab != c.Vocab || sc.D() != c.Dim {
			return nil, nil, fmt.Errorf("stage %d is for a base of width %d and vocabulary %d, this base has %d and %d", i, sc.D(), sc.Vocab, c.Dim, c.Vocab)
		}
		for j, src := range sc.Sources {
			l, err := stageLayer(src.Name, c.Layers)
			if err != nil {
				return nil, nil, fmt.Errorf("stage %d: %w", i, err)
			}
			if (j == 0) != (l == FinalLayer) {
				return nil, nil, fmt.Errorf("stage %d: source %d is %q; only the first source may be the final hidden state", i, j, src.Name)
			}
			if src.Dim != c.Dim {
				return nil, nil, fmt.Errorf("stage %d: source %q has width %d, the base %d", i, src.Name, src.Dim, c.Dim)
			}
			at := -1
			for k, have := range layers {
				if have == l {
					at = k
				}
			}
			if at < 0 {
				at = len(layers)
				layers = append(layers, l)
			}
			srcIdx[i] = append(srcIdx[i], at)
		}
	}
	return layers, srcIdx, nil
}

// ForwardStages runs the base and the carry-on stages (applied in order, as
// in Generate) over one whole sequence. It returns x, the base's final
// hidden states (T, Dim) (bridged when bridge is not ""), and y, the last
// stage's output (T, Dim) (x itself with no stage): the logits are
// W_pred·y, and W_pred·x those of the base alone.
func ForwardStages(b *Base, stages []*CarryOn, alpha float32, ids []int32, bridge string) (x, y []float32, err error) {
	layers, srcIdx, err := StageLayers(b, stages)
	if err != nil {
		return nil, nil, fmt.Errorf("model.ForwardStages: %w", err)
	}
	hs, err := b.Forward(ids, layers)
	if err != nil {
		return nil, nil, fmt.Errorf("model.ForwardStages: %w", err)
	}
	T, D := len(ids), b.Config.Dim
	if bridge != "" {
		codec, err := tensor.ParseCodec(bridge)
		if err != nil {
			return nil, nil, fmt.Errorf("model.ForwardStages: bridge: %w", err)
		}
		var buf []byte
		for _, h := range hs {
			buf = codec.Encode(buf[:0], h, T, D)
			if err := codec.Decode(h, buf, T, D); err != nil {
				return nil, nil, fmt.Errorf("model.ForwardStages: bridge: %w", err)
			}
		}
	}
	y = hs[0]
	for i, st := range stages {
		s, err := st.NewSession(T)
		if err != nil {
			return nil, nil, fmt.Errorf("model.ForwardStages: stage %d: %w", i, err)
		}
		src := make([][]float32, len(st.Config.Sources))
		src[0] = y
		for j := 1; j < len(src); j++ {
			src[j] = hs[srcIdx[i][j]]
		}
		out, err := s.Prefill(src, T, alpha)
		if err != nil {
			return nil, nil, fmt.Errorf("model.ForwardStages: stage %d: %w", i, err)
		}
		y = out // the session is dropped: out is ours
	}
	return hs[0], y, nil
}

// GenerateIDs is Generate on token ids. It returns the generated tokens
// (without the stop token) and whether a stop token ended them.
func GenerateIDs(b *Base, stages []*CarryOn, alpha float32, prompt []int32, opt GenerateOptions) ([]int32, bool, error) {
	fail := func(format string, args ...any) ([]int32, bool, error) {
		return nil, false, fmt.Errorf("model.Generate: "+format, args...)
	}
	c := b.Config
	if math.IsNaN(float64(alpha)) || math.IsInf(float64(alpha), 0) {
		return fail("alpha %v, want a finite value", alpha)
	}
	if opt.MaxTokens == 0 {
		opt.MaxTokens = 128
	}
	if opt.MaxTokens < 0 {
		return fail("MaxTokens %d, want >= 0", opt.MaxTokens)
	}
	var codec *tensor.Codec
	if opt.Bridge != "" {
		cd, err := tensor.ParseCodec(opt.Bridge)
		if err != nil {
			return fail("bridge: %w", err)
		}
		codec = &cd
	}
	sampler, err := NewSampler(opt.Temperature, opt.TopK, opt.Seed)
	if err != nil {
		return fail("%w", err)
	}
	layers, srcIdx, err := StageLayers(b, stages)
	if err != nil {
		return fail("%w", err)
	}
	maxLen := min(len(prompt)+opt.MaxTokens, c.MaxPos)
	if len(prompt) > maxLen || len(prompt) == 0 {
		return fail("prompt of %d tokens, the base takes 1..%d", len(prompt), c.MaxPos)
	}
	sess, err := b.NewSession(maxLen, layers)
	if err != nil {
		return fail("%w", err)
	}
	coSess := make([]*CarryOnSession, len(stages))
	for i, st := range stages {
		if coSess[i], err = st.NewSession(maxLen); err != nil {
			return fail("stage %d: %w", i, err)
		}
	}
	stop := map[int32]bool{}
	for _, id := range append(opt.Stop, c.EOS) {
		if id >= 0 {
			stop[id] = true
		}
	}
	logits := make([]float32, c.Vocab)
	var encBuf []byte
	// next runs T new tokens through the base and the stages and returns
	// the final output of the last position: (Dim).
	next := func(ids []int32) ([]float32, error) {
		hs, err := sess.Prefill(ids)
		if err != nil {
			return nil, err
		}
		T := len(ids)
		if codec != nil {
			for _, h := range hs {
				encBuf = codec.Encode(encBuf[:0], h, T, c.Dim)
				if err := codec.Decode(h, encBuf, T, c.Dim); err != nil {
					return nil, err
				}
			}
		}
		y := hs[0]
		for i, st := range stages {
			src := make([][]float32, len(st.Config.Sources))
			src[0] = y
			for j := 1; j < len(src); j++ {
				src[j] = hs[srcIdx[i][j]]
			}
			out, err := coSess[i].Prefill(src, T, alpha)
			if err != nil {
				return nil, err
			}
			y = append([]float32(nil), out...) // the session reuses out
		}
		return y[(T-1)*c.Dim : T*c.Dim], nil
	}
	y, err := next(prompt)
	if err != nil {
		return fail("%w", err)
	}
	var gen []int32
	for len(gen) < opt.MaxTokens {
		b.headForward(logits, y, 1)
		id := sampler.Sample(logits)
		if opt.OnToken != nil && !opt.OnToken(id) {
			return gen, false, nil
		}
		if stop[id] {
			return gen, true, nil
		}
		gen = append(gen, id)
		if len(gen) == opt.MaxTokens || len(prompt)+len(gen) >= maxLen {
			break
		}
		if y, err = next([]int32{id}); err != nil {
			return fail("%w", err)
		}
	}
	return gen, false, nil
}
