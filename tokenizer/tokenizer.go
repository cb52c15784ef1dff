package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

	"carryon/internal/capread"
)

// Tokenizer turns text into token ids and back. Encode never adds BOS or
// EOS: callers that want them add BOS() / EOS() themselves.
// Implementations are safe for concurrent use.
type Tokenizer interface {
	Encode(text string) []int32
	Decode(ids []int32) string
	VocabSize() int
	BOS() int32 // -1 if none
	EOS() int32 // -1 if none
}

// DecodeContinuation returns the text of ids that continue a text already
// decoded (tokens generated after a prompt, or one token of many): for
// SentencePiece the space a first token starts with is kept (Decode drops
// it as the dummy prefix at the start of a text); other tokenizers decode
// the same either way.
func DecodeContinuation(t Tokenizer, ids []int32) string {
	if c, ok := t.(interface{ DecodeContinuation([]int32) string }); ok {
		return c.DecodeContinuation(ids)
	}
	return t.Decode(ids)
}

// DecodeBytesContinuation is DecodeContinuation's raw bytes (part of a
// character, for some tokens).
func DecodeBytesContinuation(t Tokenizer, ids []int32) []byte {
	switch c := t.(type) {
	case interface{ DecodeBytesContinuation([]int32) []byte }:
		return c.DecodeBytesContinuation(ids)
	case interface{ DecodeBytes([]int32) []byte }:
		return c.DecodeBytes(ids)
	}
	return []byte(t.Decode(ids))
}

// ByteTokenizer is the tokenizer of byte-vocabulary test bases (model.DemoConfig): ids
// 0..255 are the bytes, 256 is BOS, 257 EOS and 258 PAD.
type ByteTokenizer struct{}

// The special ids of ByteTokenizer.
const (
	ByteTokBOS       = 256
	ByteTokEOS       = 257
	ByteTokPAD       = 258
	ByteTokVocabSize = 259
)

// Encode returns the bytes of text as ids.
func (ByteTokenizer) Encode(text string) []int32 {
	ids := make([]int32, len(text))
	for i := 0; i < len(text); i++ {
		ids[i] = int32(text[i])
	}
	return ids
}

// Decode returns the bytes of the byte ids, skipping BOS, EOS, PAD and ids
// out of range; invalid UTF-8 becomes U+FFFD.
func (t ByteTokenizer) Decode(ids []int32) string { return tokLossyUTF8(t.DecodeBytes(ids)) }

// DecodeBytes returns the raw bytes of the byte ids, as Decode without the
// UTF-8 repair.
func (ByteTokenizer) DecodeBytes(ids []int32) []byte {
	b := make([]byte, 0, len(ids))
	for _, id := range ids {
		if id >= 0 && id < 256 {
			b = append(b, byte(id))
		}
	}
	return b
}

func (ByteTokenizer) VocabSize() int { return ByteTokVocabSize }
func (ByteTokenizer) BOS() int32     { return ByteTokBOS }
func (ByteTokenizer) EOS() int32     { return ByteTokEOS }

// AddedToken is a token that is split out of the text before
// pre-tokenization, as Hugging Face's added_tokens are: the special tokens
// (<|im_start|>, <|endoftext|>, ...) and others such as Qwen3's <think>.
type AddedToken struct {
	ID      int32
	Content string
	// Special marks a control token (HF "special": true); it is still
	// split out of the text, as HF does by default.
	Special bool
	// LStrip and RStrip make a match also swallow the whitespace on its
	// left / right; SingleWord matches only where the token is not glued
	// to a word character; Normalized matches against the normalized
	// (NFC) text instead of the raw text.
	LStrip, RStrip, SingleWord, Normalized bool
}

// Size caps of the tokenizer decoders.
const (
	TokMaxFileBytes   = 256 << 20 // tokenizer.json (Qwen's is 11 MB)
	TokMaxConfigBytes = 16 << 20  // tokenizer_config.json
	TokMaxVocab       = 1 << 21   // ids must be below this
)

// BPETokenizer is a byte-level BPE tokenizer that reproduces Hugging Face
// tokenizers' output for the Qwen2/Qwen3, Llama-3 and GPT-2 families.
// It is safe for concurrent use once built (SetBOS/SetEOS excepted).
type BPETokenizer struct {
	pre         tokPretokFunc
	preName     string
	prefixSpace bool // ByteLevel add_prefix_space: a space before each segment
	prefixPiece bool // ... before each piece instead (ByteLevel after a Split)
	nfc         bool // NFC normalizer

	idTable              // tokens as stored (byte-level form; "" for holes), BOS and EOS
	byteIDs   [256]int32 // id of each single-byte token, -1 if missing
	merges    map[uint64]bpeMerge
	ignoreMrg bool  // use a pre-token that is a whole vocab entry as is
	unk       int32 // -1: bytes with no token are dropped

	added          []AddedToken
	addedByID      map[int32]int
	addedByContent map[string]int
	rawAdded       tokAddedMatcher // matched in the raw text
	normAdded      tokAddedMatcher // matched in the normalized text

	decOff []uint32 // decoded bytes of id i: decBuf[decOff[i]:decOff[i+1]]
	decBuf []byte

	cache bpeCache
}

// NewBPETokenizer builds a tokenizer from a vocabulary indexed by id (tokens
// in byte-level form), merges as "a b" strings in rank order, a
// pre-tokenizer name (PretokQwen2, PretokLlama3, PretokGPT2 or an alias
// from GGUF such as "deepseek-r1-qwen") and the special tokens to split out
// of the text (content -> id). The family's settings from its
// tokenizer.json apply: NFC normalization for Qwen2, ignore_merges for
// Llama-3 (a pre-token that is a whole vocabulary entry is kept whole).
// BOS and EOS are guessed from well-known token names; use
// SetBOS/SetEOS to set them.
func NewBPETokenizer(vocab []string, merges []string, pre string, special map[string]int32) (*BPETokenizer, error) {
	pairs, err := tokSplitMerges(merges)
	if err != nil {
		return nil, fmt.Errorf("BPE vocabulary: %w", err)
	}
	vmap := make(map[string]int32, len(vocab))
	for id, tok := range vocab {
		if _, dup := vmap[tok]; !dup {
			vmap[tok] = int32(id)
		}
	}
	var added []AddedToken
	for content, id := range special {
		added = append(added, AddedToken{ID: id, Content: content, Special: true})
	}
	sort.Slice(added, func(i, j int) bool { return added[i].ID < added[j].ID })
	family := tokPretokAliases[pre]
	opts := tokOptions{pre: pre, nfc: family == PretokQwen2, ignoreMerges: family == PretokLlama3, unk: -1}
	t, err := tokBuild(vmap, pairs, added, opts)
	if err != nil {
		return nil, fmt.Errorf("BPE vocabulary: %w", err)
	}
	t.bos, t.eos = t.guessBOS(), t.guessEOS()
	return t, nil
}

// tokOptions are the settings read from tokenizer.json besides the tables.
type tokOptions struct {
	pre          string
	prefixSpace  bool
	prefixPiece  bool
	nfc          bool
	ignoreMerges bool
	unk          int32
}

// tokBuild checks the tables and builds the tokenizer.
func tokBuild(vocab map[string]int32, merges [][2]string, added []AddedToken, o tokOptions) (*BPETokenizer, error) {
	t := &BPETokenizer{
		pre:         tokPretokFor(o.pre),
		preName:     tokPretokAliases[o.pre],
		prefixSpace: o.prefixSpace,
		prefixPiece: o.prefixPiece,
		nfc:         o.nfc,
		ignoreMrg:   o.ignoreMerges,
		unk:         o.unk,
	}
	if t.pre == nil {
		return nil, fmt.Errorf("unknown pre-tokenizer %q (supported: qwen2, llama-bpe, gpt-2)", o.pre)
	}
	if len(vocab) == 0 {
		return nil, errors.New("empty vocabulary")
	}
	maxID := int32(-1)
	for tok, id := range vocab {
		if id < 0 || id >= TokMaxVocab {
			return nil, fmt.Errorf("token %q has id %d outside [0, %d)", tok, id, TokMaxVocab)
		}
		maxID = max(maxID, id)
	}
	for _, a := range added {
		if a.ID < 0 || a.ID >= TokMaxVocab {
			return nil, fmt.Errorf("added token %q has id %d outside [0, %d)", a.Content, a.ID, TokMaxVocab)
		}
		maxID = max(maxID, a.ID)
	}
	// Ids are dense in real vocabularies; a sparse one would make the
	// id table far larger than the input.
	if n := len(vocab) + len(added); int(maxID) >= 2*n+1024 {
		return nil, fmt.Errorf("ids are too sparse: largest id %d for %d tokens", maxID, n)
	}
	t.idTable = newIDTable(make([]string, maxID+1), vocab)
	for tok, id := range vocab {
		t.tokens[id] = tok
	}
	t.addedByID = make(map[int32]int, len(added))
	t.addedByContent = make(map[string]int, len(added))
	for i, a := range added {
		t.tokens[a.ID] = a.Content
		t.addedByID[a.ID] = i
		t.addedByContent[a.Content] = i
	}
	t.added = added
	if o.unk >= 0 && int(o.unk) >= len(t.tokens) {
		return nil, fmt.Errorf("unk id %d out of range", o.unk)
	}
	for b := 0; b < 256; b++ {
		id, ok := vocab[string(bpeByteRune[b])]
		if !ok {
			id = -1
		}
		t.byteIDs[b] = id
	}
	t.merges = make(map[uint64]bpeMerge, len(merges))
	var cat []byte
	for rank, m := range merges {
		a, okA := vocab[m[0]]
		b, okB := vocab[m[1]]
		cat = append(append(cat[:0], m[0]...), m[1]...)
		c, okC := vocab[string(cat)]
		if !okA || !okB || !okC {
			return nil, fmt.Errorf("merge %d (%q, %q) names a token outside the vocabulary", rank, m[0], m[1])
		}
		t.merges[bpePairKey(a, b)] = bpeMerge{rank: int32(rank), id: c}
	}
	var raw, normd []AddedToken
	for _, a := range added {
		if a.Normalized && t.nfc {
			normd = append(normd, a)
		} else {
			raw = append(raw, a)
		}
	}
	t.rawAdded = tokNewAddedMatcher(raw)
	t.normAdded = tokNewAddedMatcher(normd)
	// Decoded bytes of every id: byte-level tokens map back to bytes,
	// anything else (added tokens) stands for its own UTF-8.
	t.decOff = make([]uint32, len(t.tokens)+1)
	for id, tok := range t.tokens {
		t.decBuf = bpeUnByteLevel(t.decBuf, tok)
		t.decOff[id+1] = uint32(len(t.decBuf))
	}
	return t, nil
}

// guessBOS and guessEOS pick the well-known names of the supported families.
func (t *BPETokenizer) guessBOS() int32 {
	return t.firstKnown("<|begin_of_text|>", "<s>")
}

func (t *BPETokenizer) guessEOS() int32 {
	return t.firstKnown("<|endoftext|>", "<|end_of_text|>", "</s>", "<|eot_id|>", "<|im_end|>")
}

func (t *BPETokenizer) firstKnown(names ...string) int32 {
	for _, n := range names {
		if id, ok := t.ID(n); ok {
			return id
		}
	}
	return -1
}

// PreTokenizer names the pre-tokenizer family (PretokQwen2, ...).
func (t *BPETokenizer) PreTokenizer() string { return t.preName }

// ID returns the id of a token string (byte-level form, or an added token's
// content).
func (t *BPETokenizer) ID(token string) (int32, bool) {
	if i, ok := t.addedByContent[token]; ok {
		return t.added[i].ID, true
	}
	id, ok := t.vocab[token]
	return id, ok
}

// AddedTokens returns the added tokens (special or not), by id.
func (t *BPETokenizer) AddedTokens() []AddedToken {
	return append([]AddedToken(nil), t.added...)
}

// IsSpecial reports whether id is an added token marked special.
func (t *BPETokenizer) IsSpecial(id int32) bool {
	i, ok := t.addedByID[id]
	return ok && t.added[i].Special
}

// Encode tokenizes text as Hugging Face's encode(text,
// add_special_tokens=False) does: added tokens are split out first and map
// to their ids, the rest is normalized, pre-tokenized and BPE-merged.
func (t *BPETokenizer) Encode(text string) []int32 { return t.encode(text, false) }

// EncodeOrdinary is Encode with the special added tokens (Special: true)
// read as plain text, as HF's split_special_tokens=True does: use it on
// untrusted text, where a literal "<|im_end|>" must not become a control
// token. Non-special added tokens (Qwen3's <think>) are still split out.
func (t *BPETokenizer) EncodeOrdinary(text string) []int32 { return t.encode(text, true) }

func (t *BPETokenizer) encode(text string, ordinary bool) []int32 {
	out := make([]int32, 0, len(text)/3+1)
	t.rawAdded.split(text, ordinary, func(seg string, id int32) {
		if id >= 0 {
			out = append(out, id)
			return
		}
		if t.nfc {
			seg = norm.NFC.String(seg)
		}
		t.normAdded.split(seg, ordinary, func(seg string, id int32) {
			if id >= 0 {
				out = append(out, id)
				return
			}
			out = t.encodeSegment(out, seg)
		})
	})
	return out
}

// encodeSegment pre-tokenizes text free of added tokens and appends the ids
// of each piece.
func (t *BPETokenizer) encodeSegment(out []int32, seg string) []int32 {
	if seg == "" {
		return out
	}
	if t.prefixSpace && !t.prefixPiece && seg[0] != ' ' {
		seg = " " + seg
	}
	for i := 0; i < len(seg); {
		e := t.pre(seg, i)
		piece := seg[i:e]
		if t.prefixSpace && t.prefixPiece && piece[0] != ' ' {
			piece = " " + piece
		}
		out = t.encodeWord(out, piece)
		i = e
	}
	return out
}

// appendByteIDs appends the ids of s's bytes: each byte's token in
// byteIDs, else unk, else (unk < 0) nothing.
func appendByteIDs(out []int32, s string, byteIDs *[256]int32, unk int32) []int32 {
	for i := 0; i < len(s); i++ {
		if id := byteIDs[s[i]]; id >= 0 {
			out = append(out, id)
		} else if unk >= 0 {
			out = append(out, unk)
		}
	}
	return out
}

// encodeWord appends the ids of one pre-token (raw bytes).
func (t *BPETokenizer) encodeWord(out []int32, word string) []int32 {
	if ids, ok := t.cache.get(word); ok {
		return append(out, ids...)
	}
	var ids []int32
	if t.ignoreMrg {
		if id, ok := t.vocab[bpeByteLevel(word)]; ok {
			ids = []int32{id}
		}
	}
	if ids == nil {
		ids = appendByteIDs(make([]int32, 0, len(word)), word, &t.byteIDs, t.unk)
		ids = bpeMergeIDs(ids, t.merges)
		ids = append([]int32(nil), ids...)
	}
	t.cache.put(strings.Clone(word), ids)
	return append(out, ids...)
}

// DecodeBytes returns the raw bytes of ids (unknown ids are skipped). A
// streaming caller can hold back an incomplete UTF-8 tail.
func (t *BPETokenizer) DecodeBytes(ids []int32) []byte {
	var out []byte
	for _, id := range ids {
		if id >= 0 && int(id) < len(t.tokens) {
			out = append(out, t.decBuf[t.decOff[id]:t.decOff[id+1]]...)
		}
	}
	return out
}

// Decode returns the text of ids as HF's ByteLevel decoder does (special
// tokens included, unknown ids skipped, invalid UTF-8 as U+FFFD).
func (t *BPETokenizer) Decode(ids []int32) string {
	return tokLossyUTF8(t.DecodeBytes(ids))
}

// tokLossyUTF8 converts b to a string, replacing each maximal invalid
// subpart with one U+FFFD, as Rust's String::from_utf8_lossy does.
func tokLossyUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || n > 1 {
			sb.Write(b[i : i+n])
			i += n
			continue
		}
		sb.WriteRune(utf8.RuneError)
		i += tokInvalidLen(b[i:])
	}
	return sb.String()
}

// tokInvalidLen is the length of the maximal subpart of an ill-formed
// sequence at the start of b (Unicode 3.9, "U+FFFD substitution of maximal
// subparts").
func tokInvalidLen(b []byte) int {
	c := b[0]
	need, lo, hi := 0, byte(0x80), byte(0xBF)
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c == 0xED:
		need, hi = 2, 0x9F
	case c >= 0xE1 && c <= 0xEF:
		need = 2
	case c == 0xF0:
		need, lo = 3, 0x90
	case c == 0xF4:
		need, hi = 3, 0x8F
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	default:
		return 1
	}
	i := 1
	for k := 0; k < need && i < len(b); k++ {
		x := b[i]
		if (k == 0 && (x < lo || x > hi)) || (k > 0 && (x < 0x80 || x > 0xBF)) {
			break
		}
		i++
	}
	return i
}

// tokAddedMatcher finds added tokens in text, leftmost-longest, as HF's
// Aho-Corasick matcher does.
type tokAddedMatcher struct {
	toks    []AddedToken
	byFirst map[byte][]int // indices into toks, longest content first
}

func tokNewAddedMatcher(toks []AddedToken) tokAddedMatcher {
	m := tokAddedMatcher{byFirst: make(map[byte][]int)}
	for _, a := range toks {
		if a.Content == "" {
			continue
		}
		m.toks = append(m.toks, a)
		m.byFirst[a.Content[0]] = append(m.byFirst[a.Content[0]], len(m.toks)-1)
	}
	for _, idx := range m.byFirst {
		sort.SliceStable(idx, func(i, j int) bool {
			return len(m.toks[idx[i]].Content) > len(m.toks[idx[j]].Content)
		})
	}
	return m
}

// split calls emit for each piece of text in order: an added token with its
// id, or the text between added tokens with id -1. With skipSpecial, special
// tokens stay in the text.
func (m *tokAddedMatcher) split(text string, skipSpecial bool, emit func(seg string, id int32)) {
	if len(m.toks) == 0 {
		emit(text, -1)
		return
	}
	done := 0 // text[:done] has been emitted
	for i := 0; i < len(text); i++ {
		cands, ok := m.byFirst[text[i]]
		if !ok {
			continue
		}
		for _, ci := range cands {
			a := &m.toks[ci]
			if !strings.HasPrefix(text[i:], a.Content) {
				continue
			}
			start, stop := i, i+len(a.Content)
			if skipSpecial && a.Special ||
				a.SingleWord && (tokEndsWithWord(text[:start]) || tokStartsWithWord(text[stop:])) {
				// HF's matcher has consumed this match: search on after it.
				i = stop - 1
				break
			}
			if a.LStrip {
				start = max(len(strings.TrimRightFunc(text[:start], unicode.IsSpace)), done)
			}
			if a.RStrip {
				stop = len(text) - len(strings.TrimLeftFunc(text[stop:], unicode.IsSpace))
			}
			if done < start {
				emit(text[done:start], -1)
			}
			emit(text[start:stop], a.ID)
			done = stop
			i = stop - 1
			break
		}
	}
	if done < len(text) {
		emit(text[done:], -1)
	}
}

func tokIsWordRune(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r)
}

func tokEndsWithWord(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && tokIsWordRune(r)
}

func tokStartsWithWord(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && tokIsWordRune(r)
}

// tokJSONSteps are the parts of tokenizer.json that both forms (byte-level
// BPE, SentencePiece) have: the added tokens and the pipeline's steps.
type tokJSONSteps struct {
	AddedTokens   []tokJSONAdded  `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
}

// JSON form of tokenizer.json (the parts this package reads).
type tokJSON struct {
	tokJSONSteps
	Model struct {
		Type                    string           `json:"type"`
		Vocab                   map[string]int32 `json:"vocab"`
		Merges                  json.RawMessage  `json:"merges"`
		IgnoreMerges            bool             `json:"ignore_merges"`
		UnkToken                *string          `json:"unk_token"`
		ContinuingSubwordPrefix *string          `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string          `json:"end_of_word_suffix"`
		ByteFallback            bool             `json:"byte_fallback"`
		Dropout                 *float64         `json:"dropout"`
	} `json:"model"`
}

type tokJSONAdded struct {
	ID         int32  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// tokJSONNode is any typed component (normalizer, pre-tokenizer, ...).
type tokJSONNode struct {
	Type           string          `json:"type"`
	AddPrefixSpace bool            `json:"add_prefix_space"`
	UseRegex       *bool           `json:"use_regex"`
	Pattern        json.RawMessage `json:"pattern"`
	Behavior       string          `json:"behavior"`
	Invert         bool            `json:"invert"`
	Normalizers    []tokJSONNode   `json:"normalizers"`
	Pretokenizers  []tokJSONNode   `json:"pretokenizers"`
	Processors     []tokJSONNode   `json:"processors"`
	Single         []struct {
		SpecialToken *struct {
			ID string `json:"id"`
		} `json:"SpecialToken"`
	} `json:"single"`
}

func tokIsNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// LoadTokenizer reads a Hugging Face tokenizer.json. When a
// tokenizer_config.json sits beside it, its bos_token and eos_token set
// BOS and EOS.
func LoadTokenizer(path string) (*BPETokenizer, error) {
	data, err := capread.ReadFile(path, TokMaxFileBytes)
	if err != nil {
		return nil, fmt.Errorf("read tokenizer: %w", err)
	}
	t, err := parseTokenizer(data)
	if err != nil {
		return nil, fmt.Errorf("read tokenizer %s: %w", path, err)
	}
	if _, err := tokConfigBeside(t, path); err != nil {
		return nil, fmt.Errorf("read tokenizer: %w", err)
	}
	return t, nil
}

// tokConfigBeside applies the tokenizer_config.json beside the
// tokenizer.json at path, if there is one, and returns its bytes (nil if
// none).
func tokConfigBeside(t tokConfigurable, path string) ([]byte, error) {
	cfgPath := filepath.Join(filepath.Dir(path), "tokenizer_config.json")
	cfg, err := capread.ReadFile(cfgPath, TokMaxConfigBytes)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := tokApplyConfig(t, cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", cfgPath, err)
	}
	return cfg, nil
}

// tokConfigurable is a tokenizer whose BOS and EOS tokenizer_config.json
// sets.
type tokConfigurable interface {
	ID(token string) (int32, bool)
	SetBOS(id int32)
	SetEOS(id int32)
}

// tokApplyConfig reads bos_token / eos_token from tokenizer_config.json: a
// string, an object with "content", or null (none).
func tokApplyConfig(t tokConfigurable, data []byte) error {
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("tokenizer_config: %w", err)
	}
	for _, k := range []string{"bos_token", "eos_token"} {
		raw, ok := cfg[k]
		if !ok {
			continue
		}
		id := int32(-1)
		if !tokIsNull(raw) {
			var name string
			if err := json.Unmarshal(raw, &name); err != nil {
				var obj struct {
					Content string `json:"content"`
				}
				if err := json.Unmarshal(raw, &obj); err != nil {
					return fmt.Errorf("tokenizer_config: %s: %w", k, err)
				}
				name = obj.Content
			}
			var found bool
			if id, found = t.ID(name); !found {
				return fmt.Errorf("tokenizer_config: %s %q is not in the vocabulary", k, name)
			}
		}
		if k == "bos_token" {
			t.SetBOS(id)
		} else {
			t.SetEOS(id)
		}
	}
	return nil
}

// ParseTokenizer parses a Hugging Face tokenizer.json holding a byte-level
// BPE model with a supported pre-tokenizer (Qwen2/Qwen3, Llama-3 or GPT-2)
// and NFC or no normalizer. BOS comes from the post-processor's template,
// EOS from well-known names.
func ParseTokenizer(data []byte) (*BPETokenizer, error) {
	return tokJSONNamed(parseTokenizer(data))
}

// parseTokenizer is ParseTokenizer with errors that do not name the file.
func parseTokenizer(data []byte) (*BPETokenizer, error) {
	return tokParseJSON(data, tokFromJSON)
}

// tokParseJSON decodes a tokenizer.json of at most TokMaxFileBytes into
// its form F (byte-level BPE or SentencePiece) and builds the tokenizer
// from it; errors do not name the file.
func tokParseJSON[F, T any](data []byte, build func(*F) (T, error)) (T, error) {
	var zero T
	if len(data) > TokMaxFileBytes {
		return zero, fmt.Errorf("%d bytes exceeds the cap of %d", len(data), TokMaxFileBytes)
	}
	var f F
	if err := json.Unmarshal(data, &f); err != nil {
		return zero, fmt.Errorf("not valid JSON: %w", err)
	}
	return build(&f)
}

// tokJSONNamed names the file in the error of a parse of tokenizer.json
// bytes (the Parse functions; the Load functions name the path instead).
func tokJSONNamed[T any](t T, err error) (T, error) {
	if err != nil {
		var zero T
		return zero, fmt.Errorf("tokenizer.json: %w", err)
	}
	return t, nil
}

func tokFromJSON(f *tokJSON) (*BPETokenizer, error) {
	m := &f.Model
	if m.Type != "BPE" {
		return nil, fmt.Errorf("model type %q is not BPE", m.Type)
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" ||
		m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, errors.New("continuing_subword_prefix / end_of_word_suffix are not supported")
	}
	if m.ByteFallback {
		return nil, errors.New("byte_fallback is not supported (not a byte-level BPE)")
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, errors.New("BPE dropout is not supported")
	}
	merges, err := tokParseMerges(m.Merges)
	if err != nil {
		return nil, err
	}
	o := tokOptions{ignoreMerges: m.IgnoreMerges, unk: -1}
	if o.nfc, err = tokParseNormalizer(f.Normalizer); err != nil {
		return nil, err
	}
	if o.pre, o.prefixSpace, o.prefixPiece, err = tokParsePretokenizer(f.PreTokenizer); err != nil {
		return nil, err
	}
	if err := tokCheckDecoder(f.Decoder); err != nil {
		return nil, err
	}
	if m.UnkToken != nil {
		id, ok := m.Vocab[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("unk_token %q is not in the vocabulary", *m.UnkToken)
		}
		o.unk = id
	}
	added := make([]AddedToken, 0, len(f.AddedTokens))
	for _, a := range f.AddedTokens {
		added = append(added, AddedToken{ID: a.ID, Content: a.Content, Special: a.Special,
			LStrip: a.LStrip, RStrip: a.RStrip, SingleWord: a.SingleWord, Normalized: a.Normalized})
	}
	t, err := tokBuild(m.Vocab, merges, added, o)
	if err != nil {
		return nil, err
	}
	if t.bos, err = postProcessorBOS(t, f.PostProcessor, -1); err != nil {
		return nil, err
	}
	t.eos = t.guessEOS()
	return t, nil
}

// postProcessorBOS returns the BOS token id that a tokenizer.json
// post_processor (raw) puts before the sequence (see templateBOS), or def
// when there is no post_processor.
func postProcessorBOS(t interface{ ID(string) (int32, bool) }, raw json.RawMessage, def int32) (int32, error) {
	if tokIsNull(raw) {
		return def, nil
	}
	var pp tokJSONNode
	if err := json.Unmarshal(raw, &pp); err != nil {
		return 0, fmt.Errorf("post_processor: %w", err)
	}
	return templateBOS(t, &pp, 0), nil
}

// templateBOS returns the id of the special token that a TemplateProcessing
// puts before the sequence (Llama-3's <|begin_of_text|>), or -1.
func templateBOS(t interface{ ID(string) (int32, bool) }, n *tokJSONNode, depth int) int32 {
	if depth > 8 {
		return -1
	}
	switch n.Type {
	case "TemplateProcessing":
		if len(n.Single) > 0 && n.Single[0].SpecialToken != nil {
			if id, ok := t.ID(n.Single[0].SpecialToken.ID); ok {
				return id
			}
		}
	case "Sequence":
		for i := range n.Processors {
			if id := templateBOS(t, &n.Processors[i], depth+1); id >= 0 {
				return id
			}
		}
	}
	return -1
}

// tokParseMerges accepts both forms: ["a b", ...] and [["a", "b"], ...].
func tokParseMerges(raw json.RawMessage) ([][2]string, error) {
	if tokIsNull(raw) {
		return nil, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		return tokSplitMerges(strs)
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf("merges: neither [\"a b\"] nor [[\"a\",\"b\"]]: %w", err)
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("merge %d has %d parts, want 2", i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

// tokSplitMerges splits merge rules of the form "a b" into pairs.
func tokSplitMerges(merges []string) ([][2]string, error) {
	out := make([][2]string, len(merges))
	for i, m := range merges {
		a, b, ok := strings.Cut(m, " ")
		if !ok || strings.Contains(b, " ") {
			return nil, fmt.Errorf("merge %d %q is not two tokens separated by one space", i, m)
		}
		out[i] = [2]string{a, b}
	}
	return out, nil
}

// tokParseNormalizer accepts no normalizer, NFC, or a Sequence of those.
func tokParseNormalizer(raw json.RawMessage) (nfc bool, err error) {
	if tokIsNull(raw) {
		return false, nil
	}
	var n tokJSONNode
	if err := json.Unmarshal(raw, &n); err != nil {
		return false, fmt.Errorf("normalizer: %w", err)
	}
	var walk func(n *tokJSONNode, depth int) error
	walk = func(n *tokJSONNode, depth int) error {
		switch {
		case n.Type == "NFC":
			nfc = true
		case n.Type == "Sequence" && depth < 8:
			for i := range n.Normalizers {
				if err := walk(&n.Normalizers[i], depth+1); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("unsupported normalizer %q (supported: none, NFC)", n.Type)
		}
		return nil
	}
	return nfc, walk(&n, 0)
}

// tokParsePretokenizer recognises the supported pre-tokenizers:
// ByteLevel with use_regex (GPT-2), or a Sequence of a Split with one of the
// known regexes (behavior Isolated) and a ByteLevel without regex.
// prefixSpace is ByteLevel's add_prefix_space; perPiece says that it acts on
// each piece of the Split rather than on each segment of text.
func tokParsePretokenizer(raw json.RawMessage) (name string, prefixSpace, perPiece bool, err error) {
	if tokIsNull(raw) {
		return "", false, false, errors.New("no pre_tokenizer: only byte-level BPE is supported")
	}
	var n tokJSONNode
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", false, false, fmt.Errorf("pre_tokenizer: %w", err)
	}
	steps := []tokJSONNode{n}
	if n.Type == "Sequence" {
		steps = n.Pretokenizers
	}
	byteLevel := false
	for _, s := range steps {
		switch s.Type {
		case "ByteLevel":
			if byteLevel {
				return "", false, false, errors.New("pre_tokenizer: two ByteLevel steps")
			}
			byteLevel = true
			prefixSpace = s.AddPrefixSpace
			perPiece = name != ""
			if s.UseRegex == nil || *s.UseRegex { // HF's default is true
				if name != "" {
					return "", false, false, errors.New("pre_tokenizer: a Split and a ByteLevel regex together are not supported")
				}
				name = PretokGPT2
			}
		case "Split":
			if name != "" || byteLevel {
				return "", false, false, errors.New("pre_tokenizer: only one Split, before ByteLevel, is supported")
			}
			var pat struct {
				Regex *string `json:"Regex"`
			}
			if err := json.Unmarshal(s.Pattern, &pat); err != nil || pat.Regex == nil {
				return "", false, false, fmt.Errorf("pre_tokenizer: Split pattern %s is not a Regex", s.Pattern)
			}
			if s.Behavior != "Isolated" || s.Invert {
				return "", false, false, fmt.Errorf("pre_tokenizer: Split behavior %q invert %v is not supported (want Isolated)", s.Behavior, s.Invert)
			}
			switch *pat.Regex {
			case tokRegexQwen2:
				name = PretokQwen2
			case tokRegexLlama3:
				name = PretokLlama3
			case tokRegexGPT2:
				name = PretokGPT2
			default:
				return "", false, false, fmt.Errorf("pre_tokenizer: unknown Split regex %q (supported: the Qwen2, Llama-3 and GPT-2 patterns)", *pat.Regex)
			}
		default:
			return "", false, false, fmt.Errorf("pre_tokenizer: unsupported step %q", s.Type)
		}
	}
	if !byteLevel || name == "" {
		return "", false, false, fmt.Errorf("pre_tokenizer %q: want ByteLevel with a known regex", n.Type)
	}
	return name, prefixSpace, perPiece, nil
}

// tokCheckDecoder requires the ByteLevel decoder (alone or in a Sequence).
func tokCheckDecoder(raw json.RawMessage) error {
	if tokIsNull(raw) {
		return errors.New("no decoder: want ByteLevel")
	}
	var n struct {
		Type     string        `json:"type"`
		Decoders []tokJSONNode `json:"decoders"`
	}
	if err := json.Unmarshal(raw, &n); err != nil {
		return fmt.Errorf("decoder: %w", err)
	}
	if n.Type == "ByteLevel" || n.Type == "Sequence" && len(n.Decoders) == 1 && n.Decoders[0].Type == "ByteLevel" {
		return nil
	}
	return fmt.Errorf("decoder %q is not supported (want ByteLevel)", n.Type)
}
