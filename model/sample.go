package model

// Sampling, the one implementation every generator shares (carryon.Generate,
// `carryon generate`, `carryon serve`): penalties, top-k, top-p, temperature
// and a seeded draw; log-probabilities; and the text of a generation as it
// grows, cut at stop strings (TextStream).

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"unicode/utf8"
)

// SampleOptions configures a Sampler. The zero value is greedy.
type SampleOptions struct {
	// Temperature divides the logits before the draw; 0 is greedy
	// (argmax). Finite, >= 0.
	Temperature float64
	// TopK keeps the k largest logits (0: all).
	TopK int
	// TopP keeps, of those, the smallest set of most likely tokens whose
	// probabilities (before the temperature, as llama.cpp's sampler
	// chain) add up to at least TopP: nucleus sampling. In [0, 1]; 0 and
	// 1 keep all.
	TopP float64
	// PresencePenalty is subtracted from the logit of every token that
	// was accepted before, and FrequencyPenalty times the number of times
	// it was (OpenAI's definition): positive values discourage repeats.
	// They apply before everything else, greedy included.
	PresencePenalty, FrequencyPenalty float64
	// Seed seeds the draws: equal options give equal draws.
	Seed uint64
}

// Validate checks the options' ranges.
func (o SampleOptions) Validate() error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case !finite(o.Temperature) || o.Temperature < 0:
		return fmt.Errorf("temperature %v, want a finite value >= 0", o.Temperature)
	case o.TopK < 0:
		return fmt.Errorf("top-k %d, want >= 0", o.TopK)
	case !(o.TopP >= 0 && o.TopP <= 1):
		return fmt.Errorf("top-p %v, want a value in [0, 1]", o.TopP)
	case !finite(o.PresencePenalty) || !finite(o.FrequencyPenalty):
		return fmt.Errorf("penalties %v, %v: want finite values", o.PresencePenalty, o.FrequencyPenalty)
	}
	return nil
}

// Sampler picks the next token from logits. A Sampler belongs to one
// generation (its penalties count that generation's tokens) and to one
// goroutine at a time.
type Sampler struct {
	opt    SampleOptions
	rng    *rand.Rand
	counts map[int32]int // accepted tokens, for the penalties

	cand  candHeap
	probs []float64
	saved []cand // logits the penalties changed, to restore
}

// NewSampler makes a sampler.
func NewSampler(o SampleOptions) (*Sampler, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("model.NewSampler: %w", err)
	}
	return &Sampler{opt: o, rng: rand.New(rand.NewPCG(o.Seed, 0x73616d706c65)), counts: map[int32]int{}}, nil
}

// Options returns the sampler's options.
func (s *Sampler) Options() SampleOptions { return s.opt }

// Accept counts a generated token for the penalties.
func (s *Sampler) Accept(id int32) { s.counts[id]++ }

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

// topK returns the k largest non-NaN logits (all when k is 0 or more than
// there are), in heap order.
func (s *Sampler) topK(logits []float32, k int) candHeap {
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
	return h
}

// Sample returns the next token for logits (Vocab). logits is left as it
// was (the penalties are undone before it returns).
func (s *Sampler) Sample(logits []float32) int32 {
	o := s.opt
	if len(s.counts) > 0 && (o.PresencePenalty != 0 || o.FrequencyPenalty != 0) {
		s.saved = s.saved[:0]
		for id, n := range s.counts {
			if id >= 0 && int(id) < len(logits) {
				s.saved = append(s.saved, cand{id, logits[id]})
				logits[id] -= float32(float64(n)*o.FrequencyPenalty + o.PresencePenalty)
			}
		}
		defer func() {
			for _, c := range s.saved {
				logits[c.id] = c.logit
			}
		}()
	}
	if o.Temperature == 0 || o.TopK == 1 {
		return Argmax(logits)
	}
	h := s.topK(logits, o.TopK)
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
	if o.TopP > 0 && o.TopP < 1 {
		h = s.nucleus(h, mx)
	}
	if cap(s.probs) < len(h) {
		s.probs = make([]float64, len(h))
	}
	p := s.probs[:len(h)]
	var sum float64
	for i, c := range h {
		p[i] = math.Exp(float64(c.logit-mx) / o.Temperature)
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

// nucleus sorts the candidates h (largest logit mx) by probability and
// returns the smallest prefix whose probabilities add up to at least TopP.
func (s *Sampler) nucleus(h candHeap, mx float32) candHeap {
	sort.Slice(h, func(i, j int) bool {
		if h[i].logit != h[j].logit {
			return h[i].logit > h[j].logit
		}
		return h[i].id < h[j].id
	})
	var z float64
	for _, c := range h {
		z += math.Exp(float64(c.logit - mx))
	}
	var cum float64
	for i, c := range h {
		cum += math.Exp(float64(c.logit-mx)) / z
		if cum >= s.opt.TopP {
			return h[:i+1]
		}
	}
	return h
}

// TokenLogprob is a token and its natural log-probability.
type TokenLogprob struct {
	ID      int32
	Logprob float64
}

// Logprobs returns id's log-probability under softmax(logits), the model's
// own distribution (no penalty, temperature or truncation), and the k most
// likely tokens with theirs, most likely first (ties: the smaller id). NaN
// logits have probability 0.
func Logprobs(logits []float32, id int32, k int) (float64, []TokenLogprob) {
	mx := float32(math.Inf(-1))
	for _, v := range logits {
		if v == v {
			mx = max(mx, v)
		}
	}
	var sum float64
	for _, v := range logits {
		if v == v {
			sum += math.Exp(float64(v - mx))
		}
	}
	lse := float64(mx) + math.Log(sum)
	lp := math.Inf(-1)
	if id >= 0 && int(id) < len(logits) && logits[id] == logits[id] {
		lp = float64(logits[id]) - lse
	}
	if k <= 0 {
		return lp, nil
	}
	var s Sampler
	h := s.topK(logits, k)
	sort.Slice(h, func(i, j int) bool {
		if h[i].logit != h[j].logit {
			return h[i].logit > h[j].logit
		}
		return h[i].id < h[j].id
	})
	top := make([]TokenLogprob, len(h))
	for i, c := range h {
		top[i] = TokenLogprob{c.id, float64(c.logit) - lse}
	}
	return lp, top
}

// TextStream follows the text of a generation as tokens arrive, finds stop
// strings and decides which of it can be shown: the pieces Add and Finish
// return add up to the final text, which ends before the first stop string.
// A piece never ends inside a possible stop string or an incomplete UTF-8
// character.
type TextStream struct {
	decode  func([]int32) string
	stops   []string
	ids     []int32
	text    string // the latest decoded text
	emitted int    // bytes of text handed out
	cut     int    // where the stop string begins, when hit
	hit     bool   // a stop string showed
}

// NewTextStream makes a stream that decodes tokens with decode (a
// tokenizer's Decode) and ends at the first of stops.
func NewTextStream(decode func([]int32) string, stops []string) *TextStream {
	return &TextStream{decode: decode, stops: stops}
}

// Add appends a generated token and returns the newly decided text and
// whether generation should go on (false once a stop string shows).
func (t *TextStream) Add(id int32) (piece string, more bool) {
	t.ids = append(t.ids, id)
	return t.Update(t.decode(t.ids))
}

// Tokens returns the tokens added.
func (t *TextStream) Tokens() []int32 { return t.ids }

// Update takes the decoded text so far (which extends the previous one,
// except perhaps in an undecided tail) and returns the newly decided piece
// and whether generation should go on. Add calls it; it is exported for
// callers that decode themselves.
func (t *TextStream) Update(text string) (piece string, more bool) {
	t.text = text
	if i := firstStop(text, t.stops); i >= 0 {
		t.cut, t.hit = max(i, t.emitted), true
		return "", false
	}
	if n := decidedLen(text, t.stops); n > t.emitted {
		piece, t.emitted = text[t.emitted:n], n
	}
	return piece, true
}

// Emitted returns how many bytes of the text have been handed out.
func (t *TextStream) Emitted() int { return t.emitted }

// Finish returns the rest of the text not yet handed out, the final text
// and whether a stop string ended it.
func (t *TextStream) Finish() (rest, text string, hit bool) {
	text = t.text
	if t.hit {
		text = text[:t.cut]
	}
	if len(text) > t.emitted {
		rest = text[t.emitted:]
	}
	return rest, text, t.hit
}

// firstStop returns the byte offset of the earliest stop string in text,
// or -1.
func firstStop(text string, stops []string) int {
	at := -1
	for _, st := range stops {
		if i := strings.Index(text, st); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	return at
}

// decidedLen returns how much of text is final: text without its longest
// suffix that is a proper prefix of a stop string, and without a trailing
// run of U+FFFD or of an incomplete character (a multi-byte character may
// still be arriving token by token).
func decidedLen(text string, stops []string) int {
	hold := 0
	for _, st := range stops {
		for l := min(len(st)-1, len(text)); l > hold; l-- {
			if strings.HasSuffix(text, st[:l]) {
				hold = l
				break
			}
		}
	}
	n := len(text) - hold
	for n > 0 {
		r, size := utf8.DecodeLastRuneInString(text[:n])
		if r != utf8.RuneError {
			break
		}
		n -= size
	}
	return n
}
