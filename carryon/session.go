package carryon

import (
	"carryon/tensor"
	"carryon/transformer"
	"fmt"
)

// Session runs a carry-on incrementally with its own key/value cache
// over its trunk, for one sequence. A Session belongs to one
// goroutine at a time.
type Session struct {
	c      *Model
	maxLen int
	n      int
	rope   *tensor.RoPE
	kc, vc [][]float32 // per block: (maxLen, Width)

	// grown on demand
	r, h, delta, gate, y []float32
	scratch              transformer.Scratch
}

// NewSession makes an incremental session for sequences of up to maxLen
// positions. maxLen may exceed Config.MaxSeq (RoPE has no learned limit).
func (c *Model) NewSession(maxLen int) (*Session, error) {
	if maxLen < 1 || maxLen > coMaxSeq {
		return nil, fmt.Errorf("model.Model.NewSession: maxLen %d out of range [1, %d]", maxLen, coMaxSeq)
	}
	cfg := c.Config
	if n := int64(2) * int64(cfg.Layers) * int64(maxLen) * int64(cfg.Width); n > 1<<32 {
		return nil, fmt.Errorf("model.Model.NewSession: a cache of %d positions needs %d floats, over the cap of 2^32", maxLen, n)
	}
	s := &Session{c: c, maxLen: maxLen, rope: tensor.NewRoPE(cfg.HeadDim(), maxLen, cfg.RopeTheta, nil, false)}
	s.kc, s.vc = make([][]float32, cfg.Layers), make([][]float32, cfg.Layers)
	for l := range s.kc {
		s.kc[l], s.vc[l] = make([]float32, maxLen*cfg.Width), make([]float32, maxLen*cfg.Width)
	}
	return s, nil
}

// Len returns the number of positions in the cache.
func (s *Session) Len() int { return s.n }

// Reset empties the cache, keeping its memory.
func (s *Session) Reset() { s.n = 0 }

// Prefill appends T positions with sources[i]: (T, Dim_i) and returns their
// outputs y = x̂ + α·g⊙Δx: (T, D), a window of the session valid until its
// next call. Rows equal Model.Forward's rows for the same positions up to
// float32 rounding.
func (s *Session) Prefill(sources [][]float32, T int, alpha float32) ([]float32, error) {
	cfg := s.c.Config
	if T < 1 {
		return nil, fmt.Errorf("model.Session.Prefill: T = %d, want >= 1", T)
	}
	if s.n+T > s.maxLen {
		return nil, fmt.Errorf("model.Session.Prefill: %d + %d positions exceed the session's %d", s.n, T, s.maxLen)
	}
	if len(sources) != len(cfg.Sources) {
		return nil, fmt.Errorf("model.Session.Prefill: %d sources, the carry-on has %d", len(sources), len(cfg.Sources))
	}
	for i, src := range cfg.Sources {
		if len(sources[i]) < T*src.Dim {
			return nil, fmt.Errorf("model.Session.Prefill: source %d (%s) has %d values, want T·Dim = %d", i, src.Name, len(sources[i]), T*src.Dim)
		}
	}
	y := s.extend(sources, T, alpha)
	s.n += T
	return y, nil
}

// Step appends one position (sources[i]: (Dim_i)) and returns its y: (D).
func (s *Session) Step(sources [][]float32, alpha float32) ([]float32, error) {
	y, err := s.Prefill(sources, 1, alpha)
	if err != nil {
		return nil, fmt.Errorf("model.Session.Step: %w", err)
	}
	return y, nil
}

// extend mirrors Model.Forward for T new positions at s.n...
func (s *Session) extend(sources [][]float32, T int, alpha float32) []float32 {
	c, cfg, start := s.c, s.c.Config, s.n
	W, D := cfg.Width, cfg.D()
	TW, TD := T*W, T*D
	pos := make([]int32, T)
	for i := range pos {
		pos[i] = int32(start + i)
	}
	s.r, s.h = tensor.Grow(s.r, TW), tensor.Grow(s.h, TW)
	s.delta, s.gate, s.y = tensor.Grow(s.delta, TD), tensor.Grow(s.gate, TD), tensor.Grow(s.y, TD)
	r := s.r
	c.project(r, sources, T)
	for l := range c.Blocks {
		p := &transformer.Pass{N: T, Pos: pos, Seqs: []int{0, T}, Rope: s.rope, K: s.kc[l], V: s.vc[l], Start: start}
		blk := trunkBlock(&c.Blocks[l])
		blk.Forward(cfg.dims(), p, r, r, &s.scratch, nil)
	}
	c.heads(s.h, s.delta, s.gate, r, nil, T)
	y := s.y[:TD]
	blend(y, sources[0][:TD], s.gate, s.delta, alpha)
	return y
}
