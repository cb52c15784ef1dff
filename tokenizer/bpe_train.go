package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/text/unicode/norm"
)

// Byte-level BPE training, GPT-2 / Hugging Face style: the text is NFC
// normalised and split into pre-tokens with the Qwen2 pattern, every byte
// starts as its own symbol (ids 0..255 in byte order), and the most frequent
// adjacent pair over all pre-tokens (weighted by their counts) is merged
// into a new symbol until the vocabulary is full. Ties go to the pair with
// the smaller (left id, right id), so training is deterministic.

// BPEVocab is a trained byte-level BPE.
type BPEVocab struct {
	Tokens  []string   // id -> token in byte-level form; the special tokens come last
	Merges  [][2]int32 // merge i joins Merges[i] into id 256+i
	Special []string   // special tokens, ids len(Tokens)-len(Special)..

	words map[string][]int32 // final segmentation of every training pre-token
	rank  map[uint64]int32   // pair -> merge index
}

// Caps of TrainBPE.
const (
	MaxBPEVocab      = 1 << 16
	MaxBPETrainBytes = 1 << 30
)

// TrainBPE learns vocabSize-len(special) byte-level tokens (256 bytes plus
// merges) from texts and appends the special tokens. It stops early when no
// pair occurs twice.
func TrainBPE(texts []string, vocabSize int, special []string) (*BPEVocab, error) {
	nMerges := vocabSize - len(special) - 256
	if vocabSize > MaxBPEVocab || nMerges < 0 {
		return nil, fmt.Errorf("model.TrainBPE: vocab size %d with %d special tokens: want 256+%d..%d", vocabSize, len(special), len(special), MaxBPEVocab)
	}
	total := 0
	for _, t := range texts {
		total += len(t)
	}
	if total > MaxBPETrainBytes {
		return nil, fmt.Errorf("model.TrainBPE: %d bytes of text exceeds the cap of %d", total, MaxBPETrainBytes)
	}
	for i, s := range special {
		if s == "" || slices.Contains(special[:i], s) {
			return nil, fmt.Errorf("model.TrainBPE: special token %d %q is empty or repeated", i, s)
		}
	}
	// Count the pre-tokens.
	counts := map[string]int64{}
	for _, t := range texts {
		forEachPretoken(t, func(w string) { counts[w]++ })
	}
	keys := make([]string, 0, len(counts))
	for w := range counts {
		keys = append(keys, w)
	}
	slices.Sort(keys) // fixed word order: deterministic pair indexes
	type word struct {
		syms []int32
		n    int64
	}
	words := make([]word, len(keys))
	pairs := map[uint64]int64{}
	where := map[uint64][]int32{} // pair -> words that held it when counted (may repeat or be stale)
	for wi, k := range keys {
		s := make([]int32, len(k))
		for i := 0; i < len(k); i++ {
			s[i] = int32(k[i])
		}
		words[wi] = word{s, counts[k]}
		for i := 0; i+1 < len(s); i++ {
			p := bpePairKey(s[i], s[i+1])
			pairs[p] += counts[k]
			where[p] = append(where[p], int32(wi))
		}
	}
	v := &BPEVocab{Special: append([]string(nil), special...)}
	for b := 0; b < 256; b++ {
		v.Tokens = append(v.Tokens, string(bpeByteRune[b]))
	}
	seen := make([]int32, len(words)) // last merge (1-based) that rewrote each word
	for len(v.Merges) < nMerges {
		var best uint64
		var bestN int64
		for p, n := range pairs {
			if n <= 0 {
				delete(pairs, p) // a pair no word holds any more
				continue
			}
			if n > bestN || n == bestN && p < best {
				best, bestN = p, n
			}
		}
		if bestN < 2 {
			break
		}
		a, b := int32(best>>32), int32(uint32(best))
		id := int32(len(v.Tokens))
		v.Merges = append(v.Merges, [2]int32{a, b})
		v.Tokens = append(v.Tokens, v.Tokens[a]+v.Tokens[b])
		mark := int32(len(v.Merges))
		for _, wi := range where[best] {
			if seen[wi] == mark {
				continue
			}
			seen[wi] = mark
			w := &words[wi]
			s := w.syms
			if !hasPair(s, a, b) {
				continue
			}
			for i := 0; i+1 < len(s); i++ {
				pairs[bpePairKey(s[i], s[i+1])] -= w.n
			}
			out := s[:0]
			for i := 0; i < len(s); i++ {
				if i+1 < len(s) && s[i] == a && s[i+1] == b {
					out = append(out, id)
					i++
				} else {
					out = append(out, s[i])
				}
			}
			w.syms = out
			for i := 0; i+1 < len(out); i++ {
				p := bpePairKey(out[i], out[i+1])
				pairs[p] += w.n
				if out[i] == id || out[i+1] == id {
					where[p] = append(where[p], wi)
				}
			}
		}
		delete(pairs, best)
		delete(where, best)
	}
	v.Tokens = append(v.Tokens, special...)
	v.words = make(map[string][]int32, len(keys))
	for wi, k := range keys {
		v.words[k] = words[wi].syms
	}
	v.buildRank()
	return v, nil
}

// hasPair reports whether a is directly followed by b in s.
func hasPair(s []int32, a, b int32) bool {
	for i := 0; i+1 < len(s); i++ {
		if s[i] == a && s[i+1] == b {
			return true
		}
	}
	return false
}

func (v *BPEVocab) buildRank() {
	v.rank = make(map[uint64]int32, len(v.Merges))
	for i, m := range v.Merges {
		v.rank[bpePairKey(m[0], m[1])] = int32(i)
	}
}

// forEachPretoken NFC-normalises text and calls fn with each Qwen2
// pre-token (raw bytes).
func forEachPretoken(text string, fn func(string)) {
	text = norm.NFC.String(text)
	for i := 0; i < len(text); {
		e := tokMatchQwen2(text, i)
		fn(text[i:e])
		i = e
	}
}

// VocabSize is the number of ids, special tokens included.
func (v *BPEVocab) VocabSize() int { return len(v.Tokens) }

// SpecialID returns the id of a special token, or -1.
func (v *BPEVocab) SpecialID(s string) int32 {
	if i := slices.Index(v.Special, s); i >= 0 {
		return int32(len(v.Tokens) - len(v.Special) + i)
	}
	return -1
}

// applyMerge replaces each pair m in s, left to right, by id, in place,
// and returns the shortened s.
func applyMerge(s []int32, m [2]int32, id int32) []int32 {
	out := s[:0]
	for i := 0; i < len(s); i++ {
		if i+1 < len(s) && s[i] == m[0] && s[i+1] == m[1] {
			out = append(out, id)
			i++
		} else {
			out = append(out, s[i])
		}
	}
	return out
}

// Encode tokenizes text (no special tokens are recognised in it) by the
// trainer's own rule: a pre-token seen in training keeps the segmentation
// training ended with; any other has the merges applied in the order they
// were learned.
func (v *BPEVocab) Encode(text string) []int32 {
	var out []int32
	forEachPretoken(text, func(w string) {
		if s, ok := v.words[w]; ok {
			out = append(out, s...)
			return
		}
		s := make([]int32, len(w))
		for i := 0; i < len(w); i++ {
			s[i] = int32(w[i])
		}
		for mi, m := range v.Merges {
			s = applyMerge(s, m, int32(256+mi))
			if len(s) == 1 {
				break
			}
		}
		out = append(out, s...)
	})
	return out
}

// TokenizerJSON returns a Hugging Face tokenizer.json for v with the Qwen2
// layout (NFC normaliser, Qwen2 Split pattern then ByteLevel, ByteLevel
// decoder), the special tokens as added tokens; LoadTokenizer reads it.
func (v *BPEVocab) TokenizerJSON() []byte {
	nBase := len(v.Tokens) - len(v.Special)
	var adds []tokJSONAdded
	for i, s := range v.Special {
		adds = append(adds, tokJSONAdded{ID: int32(nBase + i), Content: s, Special: true})
	}
	vocab := make(map[string]int, nBase)
	for id, t := range v.Tokens[:nBase] {
		vocab[t] = id
	}
	merges := make([]string, len(v.Merges))
	for i, m := range v.Merges {
		merges[i] = v.Tokens[m[0]] + " " + v.Tokens[m[1]]
	}
	doc := map[string]any{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": adds,
		"normalizer":   map[string]any{"type": "NFC"},
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": tokRegexQwen2}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		}},
		"post_processor": map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		"decoder":        map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": "",
			"end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
			"vocab": vocab, "merges": merges},
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		panic("model.BPEVocab.TokenizerJSON: " + err.Error()) // plain maps and strings: cannot fail
	}
	return buf.Bytes()
}

// MaxCorpusBytes caps what ReadCorpus reads.
const MaxCorpusBytes = 1 << 30

// ReadCorpus reads a text corpus: a file, or every regular file under a
// directory (in sorted path order, skipping names starting with "." and
// files named README*, LICENSE*, CONTENTS or *.json / *.pickle). Each file
// is one document. Files in the Brown corpus's tagged format
// ("The/at jury/nn said/vbd ...") are turned back into plain text with
// DetagBrown; others are taken as they are.
func ReadCorpus(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("model.ReadCorpus: %w", err)
	}
	var files []string
	if !st.IsDir() {
		files = []string{path}
	} else {
		err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			name := d.Name()
			if p != path && strings.HasPrefix(name, ".") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			up := strings.ToUpper(name)
			if d.Type().IsRegular() && !strings.HasPrefix(up, "README") && !strings.HasPrefix(up, "LICENSE") &&
				up != "CONTENTS" && !strings.HasSuffix(up, ".JSON") && !strings.HasSuffix(up, ".PICKLE") && up != "CATS.TXT" {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("model.ReadCorpus: %w", err)
		}
		slices.Sort(files)
	}
	var docs []string
	total := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("model.ReadCorpus: %w", err)
		}
		if total += len(data); total > MaxCorpusBytes {
			return nil, fmt.Errorf("model.ReadCorpus: %s: more than %d bytes", path, MaxCorpusBytes)
		}
		text := string(data)
		if looksBrownTagged(text) {
			text = DetagBrown(text)
		}
		if strings.TrimSpace(text) != "" {
			docs = append(docs, text)
		}
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("model.ReadCorpus: %s: no text", path)
	}
	return docs, nil
}

// looksBrownTagged reports whether most whitespace-separated words of the
// start of text carry a /tag.
func looksBrownTagged(text string) bool {
	fields := strings.Fields(text[:min(len(text), 4096)])
	if len(fields) < 10 {
		return false
	}
	tagged := 0
	for _, f := range fields {
		if i := strings.LastIndexByte(f, '/'); i > 0 && i < len(f)-1 {
			tagged++
		}
	}
	return tagged*10 >= len(fields)*9
}

// DetagBrown turns the Brown corpus's tagged text back into plain text:
// tags are dropped, the corpus's doubled back-quotes and doubled single
// quotes (its opening and closing quotes) become ", punctuation is attached to its
// word, a line that starts with a tab starts a new paragraph (one "\n"),
// other lines continue the paragraph.
func DetagBrown(tagged string) string {
	var out strings.Builder
	sc := bufio.NewScanner(strings.NewReader(tagged))
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	para := false // inside a paragraph
	quoteOpen := false
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		if para && strings.HasPrefix(line, "\t") {
			out.WriteByte('\n')
			quoteOpen = false
		} else if para {
			out.WriteByte(' ')
		}
		para = true
		glue := true // no space before the next word
		for _, f := range strings.Fields(line) {
			w := f
			if i := strings.LastIndexByte(f, '/'); i > 0 {
				w = f[:i]
			}
			switch w {
			case "``":
				w, quoteOpen = `"`, true
			case "''":
				w, quoteOpen = `"`, false
			}
			closing := w == `"` && !quoteOpen || strings.ContainsAny(w[:1], ",.;:!?)]}") || w == "'"
			if !glue && !closing {
				out.WriteByte(' ')
			}
			out.WriteString(w)
			glue = w == `"` && quoteOpen || w == "(" || w == "[" || w == "$"
		}
	}
	out.WriteByte('\n')
	return out.String()
}
