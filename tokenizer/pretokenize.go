package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Pre-tokenizers: the splitting regexes of the supported tokenizer families,
// written by hand because Go's regexp has no look-ahead. Each matcher returns
// the end of the match that the regex (leftmost-first alternation with
// greedy, backtracking quantifiers, as Oniguruma runs it inside Hugging Face
// tokenizers) makes at position i. Every rune falls into some alternative, so
// the pieces tile the input. Invalid UTF-8 bytes count as one "other" rune
// each and so survive byte-level encoding unchanged.

// Names of the supported pre-tokenizers, as GGUF's tokenizer.ggml.pre spells
// them.
const (
	PretokQwen2  = "qwen2"     // Qwen2, Qwen2.5, Qwen3, DeepSeek-R1-Distill-Qwen
	PretokLlama3 = "llama-bpe" // Llama-3.x
	PretokGPT2   = "gpt-2"     // GPT-2 (HF's ByteLevel pre-tokenizer with use_regex)
)

// The Split regexes of tokenizer.json that select each pre-tokenizer.
const (
	tokRegexQwen2  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	tokRegexLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	tokRegexGPT2   = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
)

// tokPretokAliases maps the names found in GGUF files and elsewhere to the
// matcher family.
var tokPretokAliases = map[string]string{
	"qwen2":            PretokQwen2,
	"qwen3":            PretokQwen2,
	"deepseek-r1-qwen": PretokQwen2,
	"llama-bpe":        PretokLlama3,
	"llama3":           PretokLlama3,
	"llama-3":          PretokLlama3,
	"gpt-2":            PretokGPT2,
	"gpt2":             PretokGPT2,
}

// tokPretokFunc returns the end of the pre-token starting at i (i < len(s)).
type tokPretokFunc func(s string, i int) int

func tokPretokFor(name string) tokPretokFunc {
	switch tokPretokAliases[name] {
	case PretokQwen2:
		return tokMatchQwen2
	case PretokLlama3:
		return tokMatchLlama3
	case PretokGPT2:
		return tokMatchGPT2
	}
	return nil
}

// Rune classes of the regexes: \p{L}, \p{N}, \s, and everything else.
const (
	tokOther = iota
	tokLetter
	tokNumber
	tokSpace
)

// tokRune decodes the rune at i; invalid bytes decode as utf8.RuneError of
// size 1 and class tokOther. At the end of s it returns (-1, 0).
func tokRune(s string, i int) (rune, int) {
	if i >= len(s) {
		return -1, 0
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1
	}
	return utf8.DecodeRuneInString(s[i:])
}

// tokASCIIClass classifies the ASCII runes without a table lookup.
var tokASCIIClass = func() (t [128]uint8) {
	for c := 0; c < 128; c++ {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
			t[c] = tokLetter
		case c >= '0' && c <= '9':
			t[c] = tokNumber
		case c == ' ', c >= '\t' && c <= '\r':
			t[c] = tokSpace
		default:
			t[c] = tokOther
		}
	}
	return t
}()

// tokClass classifies r (-1, past the end, is tokOther; callers check ends).
// \s is Unicode White_Space, which is what unicode.IsSpace reports.
func tokClass(r rune) uint8 {
	if r >= 0 && r < utf8.RuneSelf {
		return tokASCIIClass[r]
	}
	switch {
	case r < 0:
		return tokOther
	case unicode.IsLetter(r):
		return tokLetter
	case unicode.IsNumber(r):
		return tokNumber
	case unicode.IsSpace(r):
		return tokSpace
	}
	return tokOther
}

// tokScan returns the end of the run of runes of class cls starting at i.
func tokScan(s string, i int, cls uint8) int {
	for i < len(s) {
		r, n := tokRune(s, i)
		if tokClass(r) != cls {
			break
		}
		i += n
	}
	return i
}

// tokContractionCI matches (?i:'s|'t|'re|'ve|'m|'ll|'d) at i (s[i] == '\”)
// and returns its end, or -1. Case folding follows Unicode simple folding,
// as Oniguruma's (?i) does: U+017F LATIN SMALL LETTER LONG S folds to 's'.
func tokContractionCI(s string, i int) int {
	r, n := tokRune(s, i+1)
	j := i + 1 + n
	switch r {
	case 's', 'S', 0x17F, 't', 'T', 'm', 'M', 'd', 'D':
		return j
	}
	r2, n2 := tokRune(s, j)
	switch {
	case (r == 'r' || r == 'R' || r == 'v' || r == 'V') && (r2 == 'e' || r2 == 'E'),
		(r == 'l' || r == 'L') && (r2 == 'l' || r2 == 'L'):
		return j + n2
	}
	return -1
}

// tokWhitespaceTail handles the whitespace alternatives shared by the
// Qwen2/Llama-3 regexes, starting at i on a \s rune:
//
//	\s*[\r\n]+ | \s+(?!\S) | \s+
//
// newlines selects whether the first alternative is present (GPT-2 lacks it).
func tokWhitespaceTail(s string, i int, newlines bool) int {
	j := i
	lastNL := -1 // position of the last \r or \n in the run
	lastStart := i
	for j < len(s) {
		r, n := tokRune(s, j)
		if tokClass(r) != tokSpace {
			break
		}
		if r == '\r' || r == '\n' {
			lastNL = j
		}
		lastStart = j
		j += n
	}
	// \s*[\r\n]+: the greedy \s* backs off to the last newline of the run,
	// and [\r\n]+ takes it (nothing after it in the run is a newline).
	if newlines && lastNL >= 0 {
		return lastNL + 1
	}
	// \s+(?!\S): the whole run at the end of the text; otherwise back off
	// one rune so that the run is followed by whitespace, if that leaves one.
	if j == len(s) {
		return j
	}
	if lastStart > i {
		return lastStart
	}
	// \s+: a single whitespace rune before a non-space.
	return j
}

// tokMatchQwen2 implements
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
func tokMatchQwen2(s string, i int) int { return tokMatchLlamaFamily(s, i, 1) }

// tokMatchLlama3 implements the same with \p{N}{1,3}.
func tokMatchLlama3(s string, i int) int { return tokMatchLlamaFamily(s, i, 3) }

func tokMatchLlamaFamily(s string, i int, maxDigits int) int {
	r, n := tokRune(s, i)
	cls := tokClass(r)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r == '\'' {
		if e := tokContractionCI(s, i); e >= 0 {
			return e
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if cls == tokLetter {
		return tokScan(s, i+n, tokLetter)
	}
	if cls != tokNumber && r != '\r' && r != '\n' {
		if r2, n2 := tokRune(s, i+n); n2 > 0 && tokClass(r2) == tokLetter {
			return tokScan(s, i+n+n2, tokLetter)
		}
	}
	// \p{N} or \p{N}{1,3}
	if cls == tokNumber {
		j := i + n
		for k := 1; k < maxDigits; k++ {
			r2, n2 := tokRune(s, j)
			if n2 == 0 || tokClass(r2) != tokNumber {
				break
			}
			j += n2
		}
		return j
	}
	//  ?[^\s\p{L}\p{N}]+[\r\n]*
	j := -1
	if cls == tokOther {
		j = i
	} else if r == ' ' {
		if r2, n2 := tokRune(s, i+1); n2 > 0 && tokClass(r2) == tokOther {
			j = i + 1
		}
	}
	if j >= 0 {
		j = tokScan(s, j, tokOther)
		for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
			j++
		}
		return j
	}
	// Only whitespace is left: \s*[\r\n]+|\s+(?!\S)|\s+
	return tokWhitespaceTail(s, i, true)
}

// tokMatchGPT2 implements GPT-2's
//
//	's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
func tokMatchGPT2(s string, i int) int {
	r, n := tokRune(s, i)
	if r == '\'' && i+1 < len(s) {
		switch s[i+1] {
		case 's', 't', 'm', 'd':
			return i + 2
		case 'r', 'v':
			if i+2 < len(s) && s[i+2] == 'e' {
				return i + 3
			}
		case 'l':
			if i+2 < len(s) && s[i+2] == 'l' {
				return i + 3
			}
		}
	}
	cls := tokClass(r)
	if r == ' ' {
		// " ?X+" for the class X of the next rune, if it is not a space.
		if r2, n2 := tokRune(s, i+1); n2 > 0 {
			if c2 := tokClass(r2); c2 != tokSpace {
				return tokScan(s, i+1+n2, c2)
			}
		}
	}
	if cls != tokSpace {
		return tokScan(s, i+n, cls)
	}
	return tokWhitespaceTail(s, i, false)
}
