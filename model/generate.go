package model

// Incremental decoding: KV-cached sessions of the base (sampling is in
// sample.go; the stage chain's Generate in package carryon).

import (
	"errors"
	"fmt"

	"carryon/tensor"
	"carryon/transformer"
)

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

	x       []float32 // (T, Dim) residual stream, grown on demand
	scratch transformer.Scratch
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
	release, err := b.use("model.Session.Prefill")
	if err != nil {
		return nil, err
	}
	defer release()
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

// extend runs the blocks over T new tokens (checked) at positions s.n..
// and fills their keys and values into the cache: Base.forward with a
// cache.
func (s *Session) extend(ids []int32) [][]float32 {
	b, c := s.b, s.b.Config
	T, D, start := len(ids), c.Dim, s.n
	pos := make([]int32, T)
	for i := range pos {
		pos[i] = int32(start + i)
	}
	s.x = tensor.Grow(s.x, T*D)
	x := s.x
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
	dims := c.dims()
	for li := range b.layers {
		p := &transformer.Pass{N: T, Pos: pos, Seqs: []int{0, T}, Rope: s.rope, K: s.kc[li], V: s.vc[li], Start: start, MLPRows: mlpRows}
		blk := b.layers[li].block()
		blk.Forward(dims, p, x, x, &s.scratch, nil)
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
