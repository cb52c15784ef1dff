package tokenizer

import (
	"container/heap"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// SentencePiece (SPM) tokenization as llama.cpp runs it for GGUF files with
// tokenizer.ggml.model = "llama" (Llama 1/2, TinyLlama, Mistral 7B v0.1–0.3,
// Phi-3, CodeLlama, Vicuna, ...): the text's spaces become the marker ▁
// (U+2581), a space is put in front of the text and after each special
// token (the "dummy prefix"), and then the pair of adjacent symbols whose
// concatenation is the vocabulary entry with the highest score is merged,
// again and again, starting from single UTF-8 characters. A character that
// no token covers is written as its bytes, <0x00>…<0xFF> ("byte
// fallback"). This reproduces src/llama-vocab.cpp's llm_tokenizer_spm
// (llama.cpp v0.4.0 bundle, commit 80fb11a), which is checked against
// llama.cpp's own golden vectors in spm_test.go.

// SPM token types: the values of GGUF's tokenizer.ggml.token_type
// (llama.cpp's LLAMA_TOKEN_TYPE_*, sentencepiece's piece types).
const (
	SPMTypeUndefined   = 0
	SPMTypeNormal      = 1
	SPMTypeUnknown     = 2
	SPMTypeControl     = 3
	SPMTypeUserDefined = 4
	SPMTypeUnused      = 5
	SPMTypeByte        = 6
)

// spmSpace is the marker that stands for a space inside SPM pieces.
const spmSpace = "\u2581"

// SPMConfig is the table of a SentencePiece vocabulary, as a GGUF file's
// tokenizer.ggml.* metadata holds it.
type SPMConfig struct {
	// Tokens are the pieces by id, with ▁ for spaces and <0xXX> for the
	// byte tokens. Required; at most TokMaxVocab, no duplicates, none empty.
	Tokens []string
	// Scores rank the merges: of the candidate pairs, the one forming the
	// token with the highest score merges first. Nil means all 0.
	Scores []float32
	// Types are the SPMType* of each token. Nil means all normal.
	Types []int32
	// BOS, EOS and UNK are the ids of those tokens, -1 for none.
	BOS, EOS, UNK int32
	// AddSpacePrefix puts a space in front of the text and after every
	// special token (tokenizer.ggml.add_space_prefix; true by default).
	AddSpacePrefix bool
	// RStrip lists the special tokens that swallow the whitespace on
	// their right (llama.cpp sets this for Phi-3 by the model's name).
	RStrip []int32

	// The forms of Hugging Face's tokenizer.json (see ParseHF); all off
	// for llama.cpp's SentencePiece.

	// Merges, when not nil, replace the scores as the merge rule: only
	// these pairs of tokens merge, the earliest listed first (HF's BPE
	// model with byte_fallback, as Llama-2's tokenizer.json holds it).
	Merges [][2]string
	// UnigramScores, when not nil, segment each word by the highest total
	// score (Viterbi over every vocabulary piece, HF's Unigram model)
	// instead of merging; one per token.
	UnigramScores []float64
	// PrefixFirstOnly puts the space prefix in front of the text only,
	// not after special tokens (HF Metaspace prepend_scheme "first").
	PrefixFirstOnly bool
	// PrefixUnlessSpace leaves the space prefix out where the text
	// already starts with a space (HF's Metaspace).
	PrefixUnlessSpace bool
	// SplitWords encodes each word (a ▁ with what follows up to the next
	// ▁) on its own (HF Metaspace split).
	SplitWords bool
}

// SPMTokenizer is a SentencePiece tokenizer (llama.cpp's SPM vocabulary
// type). Encode never adds BOS or EOS: callers put BOS() in front, as
// llama.cpp does for these models. It is safe for concurrent use.
type SPMTokenizer struct {
	idTable     // the pieces as stored (with ▁), BOS and EOS
	scores      []float32
	types       []int32
	byteIDs     [256]int32 // id of <0xXX> (or of the one-byte token), -1 if none
	special     []int32    // control, user-defined and unknown tokens, longest first
	rstrip      map[int32]bool
	spacePrefix bool
	unk         int32

	merges      map[uint64]bpeMerge // HF BPE form: pair of ids → rank and result
	unigram     []float64           // HF Unigram form: the scores
	unkScore    float64             // Unigram: the score of an unknown character
	maxPiece    int                 // Unigram: the longest piece in bytes
	firstOnly   bool
	unlessSpace bool
	splitWords  bool

	decOff []uint32 // decoded bytes of id i: decBuf[decOff[i]:decOff[i+1]]
	decBuf []byte
}

// NewSPMTokenizer checks the table and builds the tokenizer.
func NewSPMTokenizer(c SPMConfig) (*SPMTokenizer, error) {
	n := len(c.Tokens)
	switch {
	case n == 0:
		return nil, errors.New("SentencePiece vocabulary: empty vocabulary")
	case n > TokMaxVocab:
		return nil, fmt.Errorf("SentencePiece vocabulary: %d tokens exceeds the cap of %d", n, TokMaxVocab)
	case c.Scores != nil && len(c.Scores) < n:
		return nil, fmt.Errorf("SentencePiece vocabulary: %d scores for %d tokens", len(c.Scores), n)
	case c.Types != nil && len(c.Types) < n:
		return nil, fmt.Errorf("SentencePiece vocabulary: %d token types for %d tokens", len(c.Types), n)
	}
	t := &SPMTokenizer{
		idTable:     newIDTable(c.Tokens, make(map[string]int32, n)),
		scores:      c.Scores,
		types:       c.Types,
		rstrip:      map[int32]bool{},
		spacePrefix: c.AddSpacePrefix,
		unigram:     c.UnigramScores,
		firstOnly:   c.PrefixFirstOnly,
		unlessSpace: c.PrefixUnlessSpace,
		splitWords:  c.SplitWords,
		unk:         -1,
	}
	if t.scores == nil {
		t.scores = make([]float32, n)
	}
	if t.types == nil {
		t.types = make([]int32, n)
		for i := range t.types {
			t.types[i] = SPMTypeNormal
		}
	}
	for id, tok := range c.Tokens {
		if tok == "" {
			return nil, fmt.Errorf("SentencePiece vocabulary: token %d is empty", id)
		}
		if prev, dup := t.vocab[tok]; dup {
			return nil, fmt.Errorf("SentencePiece vocabulary: token %q appears twice (ids %d and %d)", tok, prev, id)
		}
		t.vocab[tok] = int32(id)
	}
	for _, x := range []struct {
		dst  *int32
		id   int32
		name string
	}{{&t.bos, c.BOS, "BOS"}, {&t.eos, c.EOS, "EOS"}, {&t.unk, c.UNK, "unknown-token"}} {
		if x.id >= int32(n) {
			return nil, fmt.Errorf("SentencePiece vocabulary: the %s id %d is outside the vocabulary of %d", x.name, x.id, n)
		}
		*x.dst = max(x.id, -1)
	}
	for b := range 256 {
		t.byteIDs[b] = -1
		if id, ok := t.vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			t.byteIDs[b] = id
		} else if id, ok := t.vocab[string([]byte{byte(b)})]; ok {
			t.byteIDs[b] = id
		}
	}
	for id, ty := range t.types[:n] {
		if ty == SPMTypeControl || ty == SPMTypeUserDefined || ty == SPMTypeUnknown {
			t.special = append(t.special, int32(id))
		}
	}
	// llama.cpp sorts by length only (std::sort, not stable); ties go by id.
	sort.SliceStable(t.special, func(i, j int) bool { return len(t.tokens[t.special[i]]) > len(t.tokens[t.special[j]]) })
	for _, id := range c.RStrip {
		if id >= 0 && id < int32(n) {
			t.rstrip[id] = true
		}
	}
	if c.UnigramScores != nil {
		if len(c.UnigramScores) < n {
			return nil, fmt.Errorf("SentencePiece vocabulary: %d Unigram scores for %d tokens", len(c.UnigramScores), n)
		}
		// HF: an unknown character costs the lowest score less 10.
		lowest := c.UnigramScores[0]
		for i, s := range c.UnigramScores[:n] {
			lowest = min(lowest, s)
			t.maxPiece = max(t.maxPiece, len(c.Tokens[i]))
		}
		t.unkScore = lowest - 10
	}
	if c.Merges != nil {
		if c.UnigramScores != nil {
			return nil, errors.New("SentencePiece vocabulary: merges and Unigram together")
		}
		t.merges = make(map[uint64]bpeMerge, len(c.Merges))
		for rank, m := range c.Merges {
			a, okA := t.vocab[m[0]]
			b, okB := t.vocab[m[1]]
			r, okR := t.vocab[m[0]+m[1]]
			if !okA || !okB || !okR {
				return nil, fmt.Errorf("SentencePiece vocabulary: merge %d (%q, %q) names a token outside the vocabulary", rank, m[0], m[1])
			}
			if _, dup := t.merges[bpePairKey(a, b)]; !dup {
				t.merges[bpePairKey(a, b)] = bpeMerge{rank: int32(rank), id: r}
			}
		}
	}
	t.decOff = make([]uint32, n+1)
	for id := range n {
		t.decBuf = append(t.decBuf, t.piece(int32(id))...)
		t.decOff[id+1] = uint32(len(t.decBuf))
	}
	return t, nil
}

// piece returns the bytes a token decodes to, as llama.cpp's token_to_piece
// with special tokens rendered: ▁ becomes a space in normal tokens, a byte
// token is its byte, control, unknown and user-defined tokens are their
// text, unused and undefined tokens nothing.
func (t *SPMTokenizer) piece(id int32) []byte {
	tok := t.tokens[id]
	switch t.types[id] {
	case SPMTypeControl, SPMTypeUnknown, SPMTypeUserDefined:
		return []byte(tok)
	case SPMTypeNormal:
		return []byte(strings.ReplaceAll(tok, spmSpace, " "))
	case SPMTypeByte:
		if b, ok := spmByteValue(tok); ok {
			return []byte{b}
		}
		return []byte(tok)
	}
	return nil
}

// spmByteValue parses a byte token <0xXX>.
func spmByteValue(tok string) (byte, bool) {
	if len(tok) != 6 || !strings.HasPrefix(tok, "<0x") || tok[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range tok[3:5] {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | byte(c-'0')
		case c >= 'A' && c <= 'F':
			v = v<<4 | byte(c-'A'+10)
		case c >= 'a' && c <= 'f':
			v = v<<4 | byte(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// ID returns the id of a piece as stored (with ▁).
func (t *SPMTokenizer) ID(token string) (int32, bool) {
	id, ok := t.vocab[token]
	return id, ok
}

// IsSpecial reports whether id is a control or unknown token.
func (t *SPMTokenizer) IsSpecial(id int32) bool {
	if id < 0 || int(id) >= len(t.types) {
		return false
	}
	return t.types[id] == SPMTypeControl || t.types[id] == SPMTypeUnknown
}

// Encode returns the ids of text, with special tokens (<s>, </s>, Phi-3's
// <|user|>, ...) written in the text split out as those tokens, as
// llama.cpp's tokenize with parse_special. BOS is not added.
func (t *SPMTokenizer) Encode(text string) []int32 { return t.encode(text, true) }

// EncodeOrdinary is Encode with control and unknown tokens left in the
// text as text (user-defined tokens are still split out), as llama.cpp's
// tokenize without parse_special: the form of llama.cpp's golden vectors.
func (t *SPMTokenizer) EncodeOrdinary(text string) []int32 { return t.encode(text, false) }

// EncodeContinuation is Encode for text that continues text already
// encoded: without the dummy prefix in front (one still follows each
// special token). A text cut before a space encodes as the whole does, as
// long as no token spans the cut.
func (t *SPMTokenizer) EncodeContinuation(text string) []int32 {
	return t.encodeFrom(text, true, false)
}

// spmFragment is a piece of the text between special tokens (id < 0) or a
// special token (id >= 0).
type spmFragment struct {
	text string
	id   int32
}

func (t *SPMTokenizer) encode(text string, parseSpecial bool) []int32 {
	return t.encodeFrom(text, parseSpecial, true) // the dummy prefix goes in front of the first text
}

func (t *SPMTokenizer) encodeFrom(text string, parseSpecial, prevSpecial bool) []int32 {
	if text == "" {
		return nil
	}
	frags := t.partition(text, parseSpecial)
	var out []int32
	var sb strings.Builder
	first := prevSpecial // at the start of the text
	for _, f := range frags {
		if f.id >= 0 {
			out = append(out, f.id)
			prevSpecial, first = true, false
			continue
		}
		sb.Reset()
		if t.spacePrefix && prevSpecial && (first || !t.firstOnly) && !(t.unlessSpace && (f.text[0] == ' ' || strings.HasPrefix(f.text, spmSpace))) {
			sb.WriteString(spmSpace)
		}
		first = false
		for i := 0; i < len(f.text); {
			j := strings.IndexByte(f.text[i:], ' ')
			if j < 0 {
				sb.WriteString(f.text[i:])
				break
			}
			sb.WriteString(f.text[i : i+j])
			sb.WriteString(spmSpace)
			i += j + 1
		}
		out = t.encodeWords(out, sb.String())
		prevSpecial = false
	}
	return out
}

// partition splits the special tokens out of text as llama.cpp's
// tokenizer_st_partition: token by token, longest first, each over every
// text fragment left by the ones before.
func (t *SPMTokenizer) partition(text string, parseSpecial bool) []spmFragment {
	frags := []spmFragment{{text: text, id: -1}}
	for _, sid := range t.special {
		ty := t.types[sid]
		if !parseSpecial && (ty == SPMTypeControl || ty == SPMTypeUnknown) {
			continue
		}
		tok := t.tokens[sid]
		var next []spmFragment
		changed := false
		for _, f := range frags {
			if f.id >= 0 || !strings.Contains(f.text, tok) {
				next = append(next, f)
				continue
			}
			changed = true
			s := f.text
			for {
				i := strings.Index(s, tok)
				if i < 0 {
					if s != "" {
						next = append(next, spmFragment{text: s, id: -1})
					}
					break
				}
				if i > 0 {
					next = append(next, spmFragment{text: s[:i], id: -1})
				}
				next = append(next, spmFragment{id: sid})
				s = s[i+len(tok):]
				if t.rstrip[sid] {
					s = strings.TrimLeft(s, " \t\n\v\f\r")
				}
			}
		}
		if changed {
			frags = next
		}
	}
	return frags
}

// spmSymbol is a piece of the text being merged: text[start:start+n],
// linked to its neighbours; n = 0 once merged into the left one.
type spmSymbol struct {
	start, n   int32
	prev, next int32
}

// spmBigram is a candidate merge of two adjacent symbols.
type spmBigram struct {
	left, right int32
	score       float32
	size        int32
}

// spmQueue pops the highest score first, then the leftmost.
type spmQueue []spmBigram

func (q spmQueue) Len() int { return len(q) }
func (q spmQueue) Less(i, j int) bool {
	return q[i].score > q[j].score || (q[i].score == q[j].score && q[i].left < q[j].left)
}
func (q spmQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *spmQueue) Push(x any)   { *q = append(*q, x.(spmBigram)) }
func (q *spmQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}

// spmUTF8Len is llama.cpp's unicode_len_utf8: the length of a UTF-8
// sequence by its first byte (1 for a stray continuation byte).
func spmUTF8Len(b byte) int {
	return [16]int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4}[b>>4]
}

// encodeWords appends the ids of one escaped text fragment: as one word,
// or with SplitWords each ▁ with what follows up to the next ▁ (HF's
// MergedWithNext split).
func (t *SPMTokenizer) encodeWords(out []int32, text string) []int32 {
	if !t.splitWords {
		return t.encodeText(out, text)
	}
	for text != "" {
		i := strings.Index(text[1:], spmSpace)
		if i < 0 {
			return t.encodeText(out, text)
		}
		out = t.encodeText(out, text[:i+1])
		text = text[i+1:]
	}
	return out
}

// encodeText appends the ids of one escaped word (llama.cpp's
// llm_tokenizer_spm_session.tokenize, or with Merges HF's BPE model, or
// with Unigram HF's Unigram model). O(n log n) in the word's length
// (Unigram: times the longest piece).
func (t *SPMTokenizer) encodeText(out []int32, text string) []int32 {
	if t.unigram != nil {
		return t.encodeUnigram(out, text)
	}
	syms := make([]spmSymbol, 0, len(text))
	for off := 0; off < len(text); {
		n := min(spmUTF8Len(text[off]), len(text)-off)
		idx := int32(len(syms))
		next := idx + 1
		if off+n == len(text) {
			next = -1
		}
		syms = append(syms, spmSymbol{start: int32(off), n: int32(n), prev: idx - 1, next: next})
		off += n
	}
	q := make(spmQueue, 0, len(syms))
	try := func(left, right int32) {
		if left < 0 || right < 0 {
			return
		}
		l, r := syms[left], syms[right]
		if t.merges != nil {
			a, okA := t.vocab[text[l.start:l.start+l.n]]
			b, okB := t.vocab[text[r.start:r.start+r.n]]
			m, ok := t.merges[bpePairKey(a, b)]
			if okA && okB && ok {
				heap.Push(&q, spmBigram{left: left, right: right, score: -float32(m.rank), size: l.n + r.n})
			}
			return
		}
		id, ok := t.vocab[text[l.start:r.start+r.n]]
		if !ok {
			return
		}
		heap.Push(&q, spmBigram{left: left, right: right, score: t.scores[id], size: l.n + r.n})
	}
	for i := int32(1); i < int32(len(syms)); i++ {
		try(i-1, i)
	}
	for q.Len() > 0 {
		b := heap.Pop(&q).(spmBigram)
		l, r := &syms[b.left], &syms[b.right]
		if l.n == 0 || r.n == 0 || l.n+r.n != b.size {
			continue // one side was merged since
		}
		l.n += r.n
		r.n = 0
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = b.left
		}
		try(l.prev, b.left)
		try(b.left, l.next)
	}
	for i := int32(0); i >= 0 && len(syms) > 0; i = syms[i].next {
		s := syms[i]
		piece := text[s.start : s.start+s.n]
		if id, ok := t.vocab[piece]; ok {
			out = append(out, id)
			continue
		}
		// A merged symbol is always a token, so this is one character
		// that no token covers: its bytes.
		out = appendByteIDs(out, piece, &t.byteIDs, t.unk)
	}
	return out
}

// DecodeBytes returns the raw bytes of ids (ids out of range are skipped),
// as llama.cpp's detokenize with special tokens rendered: with the space
// prefix on, a leading space of the first token is dropped (it is the
// dummy prefix Encode added; BOS has none, so after BOS nothing is).
func (t *SPMTokenizer) DecodeBytes(ids []int32) []byte { return t.decodeBytes(ids, t.spacePrefix) }

// DecodeBytesContinuation is DecodeBytes for ids that continue a text
// (tokens generated after a prompt, one token of many): the space a first
// token starts with is kept, as llama.cpp's token_to_piece keeps it,
// since the dummy prefix is only at the start of a text.
func (t *SPMTokenizer) DecodeBytesContinuation(ids []int32) []byte { return t.decodeBytes(ids, false) }

// DecodeContinuation is DecodeBytesContinuation as text, with invalid
// UTF-8 as U+FFFD.
func (t *SPMTokenizer) DecodeContinuation(ids []int32) string {
	return tokLossyUTF8(t.DecodeBytesContinuation(ids))
}

func (t *SPMTokenizer) decodeBytes(ids []int32, strip bool) []byte {
	var out []byte
	for _, id := range ids {
		if id < 0 || int(id) >= len(t.tokens) {
			continue
		}
		p := t.decBuf[t.decOff[id]:t.decOff[id+1]]
		if strip && len(p) > 0 && p[0] == ' ' {
			p = p[1:]
		}
		strip = false
		out = append(out, p...)
	}
	return out
}

// Decode returns the text of ids as DecodeBytes, with invalid UTF-8 as
// U+FFFD.
func (t *SPMTokenizer) Decode(ids []int32) string { return tokLossyUTF8(t.DecodeBytes(ids)) }

// encodeUnigram appends the ids of one escaped word as HF's Unigram model
// (encode_optimized, then tokenize) does: the segmentation into
// vocabulary pieces with the highest total score, where a character no
// piece of its own length covers may stand alone at unkScore; of equal
// totals the piece starting earliest wins. Consecutive unknown
// characters fuse into one piece, written as its bytes (byte fallback)
// or as the unknown token.
func (t *SPMTokenizer) encodeUnigram(out []int32, text string) []int32 {
	type best struct {
		score float64
		start int32 // -1: not reached
		id    int32 // -1: unknown character
	}
	path := make([]best, len(text)+1)
	for i := range path {
		path[i].start = -1
	}
	path[0].start = 0
	for at := 0; at < len(text); {
		n := min(spmUTF8Len(text[at]), len(text)-at)
		base := path[at].score
		single := false
		for end := at + 1; end <= min(len(text), at+t.maxPiece); end++ {
			id, ok := t.vocab[text[at:end]]
			if !ok {
				continue
			}
			if end-at == n {
				single = true
			}
			if p := &path[end]; p.start < 0 || base+t.unigram[id] > p.score {
				*p = best{score: base + t.unigram[id], start: int32(at), id: id}
			}
		}
		if !single {
			if p := &path[at+n]; p.start < 0 || base+t.unkScore > p.score {
				*p = best{score: base + t.unkScore, start: int32(at), id: -1}
			}
		}
		at += n
	}
	// Walk back from the end, fusing runs of unknown characters.
	type piece struct{ start, end, id int32 }
	var pieces []piece
	for end := int32(len(text)); end > 0; {
		p := path[end]
		if p.id < 0 && len(pieces) > 0 && pieces[len(pieces)-1].id < 0 && pieces[len(pieces)-1].start == end {
			pieces[len(pieces)-1].start = p.start
		} else {
			pieces = append(pieces, piece{p.start, end, p.id})
		}
		end = p.start
	}
	for i := len(pieces) - 1; i >= 0; i-- {
		p := pieces[i]
		if p.id < 0 {
			if id, ok := t.vocab[text[p.start:p.end]]; ok {
				p.id = id
			}
		}
		if p.id >= 0 {
			out = append(out, p.id)
			continue
		}
		bytesOK := true
		for j := p.start; j < p.end; j++ {
			bytesOK = bytesOK && t.byteIDs[text[j]] >= 0
		}
		switch {
		case bytesOK:
			for j := p.start; j < p.end; j++ {
				out = append(out, t.byteIDs[text[j]])
			}
		case t.unk >= 0:
			out = append(out, t.unk)
		}
	}
	return out
}
