package tokenizer

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"carryon/internal/testenv"
	"carryon/tensor"
)

// spmVocab returns the path of llama.cpp's vocab-only GGUF
// ggml-vocab-NAME.gguf with its golden .inp/.out beside it: from the
// oracle's vocab/ folder, else read out of the llama.cpp source bundle that
// setup.sh keeps there (llama.cpp.git, models/) into a temporary folder.
func spmVocab(t *testing.T, name string) string {
	t.Helper()
	dir := oracleDir(t)
	f := "ggml-vocab-" + name + ".gguf"
	if p := filepath.Join(dir, "vocab", f); fileExists(p) && fileExists(p+".inp") && fileExists(p+".out") {
		return p
	}
	gitDir := filepath.Join(dir, "llama.cpp.git")
	if _, err := exec.LookPath("git"); err != nil || !fileExists(gitDir) {
		testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "neither %s nor the llama.cpp bundle %s is there (run tools/llamacpp/setup.sh)", filepath.Join(dir, "vocab", f), gitDir)
	}
	tmp := t.TempDir()
	for _, ext := range []string{"", ".inp", ".out"} {
		out, err := exec.Command("git", "--git-dir", gitDir, "show", "HEAD:models/"+f+ext).Output()
		if err != nil {
			t.Fatalf("git show models/%s%s from %s: %v", f, ext, gitDir, err)
		}
		if err := os.WriteFile(filepath.Join(tmp, f+ext), out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(tmp, f)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestSPMGolden runs llama.cpp's own tokenizer test vectors (made with
// Hugging Face's sentencepiece tokenizers, add_special=false and
// parse_special=false) for its Llama-2 and Phi-3 SentencePiece vocabularies:
// every case must give the same ids and decode back to its text.
func TestSPMGolden(t *testing.T) {
	for _, name := range []string{"llama-spm", "phi-3"} {
		t.Run(name, func(t *testing.T) {
			base := spmVocab(t, name)
			tk := loadAs[*SPMTokenizer](t, LoadGGUF, base)
			if tk.VocabSize() < 32000 || tk.BOS() != 1 || tk.Token(tk.BOS()) != "<s>" {
				t.Fatalf("vocab %d, BOS %d %q", tk.VocabSize(), tk.BOS(), tk.Token(tk.BOS()))
			}
			texts, wants := goldenCases(t, base)
			for i, text := range texts {
				got := tk.EncodeOrdinary(text)
				if !slices.Equal(got, wants[i]) && !(len(got) == 0 && len(wants[i]) == 0) {
					t.Errorf("case %d %q:\n got %v\nwant %v", i, text, got, wants[i])
				}
				if enc := tk.Encode(text); !slices.Equal(enc, got) {
					t.Errorf("case %d: Encode %v differs from EncodeOrdinary %v on text without special tokens", i, enc, got)
				}
				if dec := tk.Decode(wants[i]); dec != text {
					t.Errorf("case %d: Decode = %q, want %q", i, dec, text)
				}
			}
			// A text cut before a space (not inside a run of spaces, which
			// has tokens of its own) encodes as the whole when the rest goes
			// through EncodeContinuation (dataset reads long text so).
			for i, text := range texts {
				if j := strings.LastIndexByte(text, ' '); j > 0 && text[j-1] != ' ' {
					got := append(tk.Encode(text[:j]), tk.EncodeContinuation(text[j:])...)
					if want := tk.Encode(text); !slices.Equal(got, want) {
						t.Errorf("case %d cut at %d: %v, want %v", i, j, got, want)
					}
				}
			}
			// Special tokens: split out by Encode, with the dummy prefix
			// after them as llama.cpp puts it; text for EncodeOrdinary.
			hello := tk.EncodeOrdinary("Hello")
			if got, want := tk.Encode("<s>Hello"), append([]int32{1}, hello...); !slices.Equal(got, want) {
				t.Errorf("Encode(<s>Hello) = %v, want %v", got, want)
			}
			if got := tk.EncodeOrdinary("<s>Hello"); slices.Contains(got, 1) {
				t.Errorf("EncodeOrdinary(<s>Hello) = %v: <s> must stay text", got)
			}
			if got := tk.Decode(append([]int32{1}, hello...)); got != "<s> Hello" {
				t.Errorf("Decode(BOS Hello) = %q, want %q (no dummy prefix to drop after BOS)", got, "<s> Hello")
			}
		})
	}
}

// TestSPMPhi3RStrip checks that Phi-3's chat tokens swallow the whitespace
// after them (llama.cpp's rule for models named phi-3), and <s> does not.
func TestSPMPhi3RStrip(t *testing.T) {
	tok, err := LoadGGUF(spmVocab(t, "phi-3"))
	if err != nil {
		t.Fatal(err)
	}
	tk := tok.(*SPMTokenizer)
	user, ok := tk.ID("<|user|>")
	if !ok {
		t.Fatal("no <|user|> in the Phi-3 vocabulary")
	}
	a, b := tk.Encode("<|user|>\nHi"), tk.Encode("<|user|>Hi")
	if !slices.Equal(a, b) || a[0] != user {
		t.Errorf("Encode(<|user|>\\nHi) = %v, Encode(<|user|>Hi) = %v: want equal, starting with %d", a, b, user)
	}
	if s1, s2 := tk.Encode("<s>\nHi"), tk.Encode("<s>Hi"); slices.Equal(s1, s2) {
		t.Errorf("<s> swallowed the newline after it: %v", s1)
	}
}

// tinySPM is a small SentencePiece vocabulary: <unk> <s> </s>, the 256
// byte tokens, then pieces whose scores make the merge order matter, and a
// user-defined token.
func tinySPM(t testing.TB, prefix bool) *SPMTokenizer {
	toks := []string{"<unk>", "<s>", "</s>"}
	types := []int32{SPMTypeUnknown, SPMTypeControl, SPMTypeControl}
	for b := range 256 {
		toks, types = append(toks, fmt.Sprintf("<0x%02X>", b)), append(types, SPMTypeByte)
	}
	scores := make([]float32, len(toks))
	for i, p := range []string{"▁", "a", "b", "c", "ab", "bc", "abc", "▁a", "▁ab", "▁abc", "é"} {
		toks, types, scores = append(toks, p), append(types, SPMTypeNormal), append(scores, -float32(i))
	}
	toks, types, scores = append(toks, "<tool>"), append(types, SPMTypeUserDefined), append(scores, 0)
	tk, err := NewSPMTokenizer(SPMConfig{Tokens: toks, Scores: scores, Types: types, BOS: 1, EOS: 2, UNK: 0, AddSpacePrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// TestSPMMergeOrder checks the merge rule on a hand-made vocabulary: the
// pair forming the best-scored token merges first, a character without a
// token falls back to its bytes, and user-defined tokens are split out
// even by EncodeOrdinary.
func TestSPMMergeOrder(t *testing.T) {
	tk := tinySPM(t, true)
	id := func(p string) int32 {
		v, ok := tk.ID(p)
		if !ok {
			t.Fatalf("no %q", p)
		}
		return v
	}
	for _, c := range []struct {
		text string
		want []int32
	}{
		// ▁abc: "ab" (score -4) beats "bc" (-5) and ▁a (-7), then abc
		// (-6) beats ▁ab (-8), then ▁ + abc = ▁abc (-9).
		{"abc", []int32{id("▁abc")}},
		// No dummy prefix inside: "x" has no token: its byte.
		{"xbc", []int32{id("▁"), 3 + 'x', id("bc")}},
		{"é", []int32{id("▁"), id("é")}},
		{"ü", []int32{id("▁"), 3 + 0xC3, 3 + 0xBC}},
		{"a<tool>a", []int32{id("▁a"), id("<tool>"), id("▁a")}},
		{"", nil},
	} {
		if got := tk.EncodeOrdinary(c.text); !slices.Equal(got, c.want) {
			t.Errorf("EncodeOrdinary(%q) = %v, want %v", c.text, got, c.want)
		}
		// After a special token the dummy prefix comes back as a space.
		if got, want := tk.Decode(c.want), strings.ReplaceAll(c.text, "<tool>", "<tool> "); got != want {
			t.Errorf("Decode(%v) = %q, want %q", c.want, got, want)
		}
	}
	if got := tinySPM(t, false).EncodeOrdinary("abc"); !slices.Equal(got, []int32{id("abc")}) {
		t.Errorf("without the space prefix: %v, want [abc]", got)
	}
}

// TestSPMRejects checks NewSPMTokenizer's and SPMFromGGUF's errors.
func TestSPMRejects(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  SPMConfig
		want string
	}{
		{"empty", SPMConfig{}, "empty vocabulary"},
		{"empty token", SPMConfig{Tokens: []string{"a", ""}}, "token 1 is empty"},
		{"dup", SPMConfig{Tokens: []string{"a", "a"}}, "appears twice"},
		{"scores", SPMConfig{Tokens: []string{"a", "b"}, Scores: []float32{0}}, "1 scores for 2 tokens"},
		{"types", SPMConfig{Tokens: []string{"a", "b"}, Types: []int32{1}}, "1 token types"},
		{"bos", SPMConfig{Tokens: []string{"a"}, BOS: 5}, "BOS id 5"},
	} {
		if _, err := NewSPMTokenizer(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", c.name, err, c.want)
		}
	}
	for _, c := range []struct {
		name string
		kv   []tensor.GGUFKV
		want string
	}{
		{"model", []tensor.GGUFKV{{Key: "tokenizer.ggml.model", Value: "bert"}}, `"bert": supported are gpt2`},
		{"no tokens", []tensor.GGUFKV{{Key: "tokenizer.ggml.model", Value: "llama"}}, "tokenizer.ggml.tokens is missing"},
		{"short scores", []tensor.GGUFKV{{Key: "tokenizer.ggml.model", Value: "llama"},
			{Key: "tokenizer.ggml.tokens", Value: []string{"a", "b"}}, {Key: "tokenizer.ggml.scores", Value: []float32{1}}}, "scores must be a float32 array of at least 2"},
		{"types", []tensor.GGUFKV{{Key: "tokenizer.ggml.model", Value: "llama"},
			{Key: "tokenizer.ggml.tokens", Value: []string{"a", "b"}}, {Key: "tokenizer.ggml.token_type", Value: []string{"x"}}}, "token_type must be an int32 array"},
	} {
		g := ggufOf(t, c.kv)
		if _, err := FromGGUF(g); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// ggufOf writes a GGUF file of metadata alone and parses it back.
func ggufOf(t testing.TB, kv []tensor.GGUFKV) *tensor.GGUF {
	var buf bytes.Buffer
	if err := tensor.WriteGGUF(&buf, kv, nil); err != nil {
		t.Fatal(err)
	}
	g, err := tensor.ParseGGUF(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestSPMFromGGUFDefaults checks llama.cpp's defaults and overrides: BOS 1
// and EOS 2 without the keys, no BOS with add_bos_token false, no space
// prefix with add_space_prefix false.
func TestSPMFromGGUFDefaults(t *testing.T) {
	toks := []string{"<unk>", "<s>", "</s>", "▁a", "a"}
	types := []int32{SPMTypeUnknown, SPMTypeControl, SPMTypeControl, SPMTypeNormal, SPMTypeNormal}
	base := []tensor.GGUFKV{{Key: "tokenizer.ggml.model", Value: "llama"}, {Key: "tokenizer.ggml.tokens", Value: toks},
		{Key: "tokenizer.ggml.token_type", Value: types}}
	tok, err := FromGGUF(ggufOf(t, base))
	if err != nil {
		t.Fatal(err)
	}
	if tok.BOS() != 1 || tok.EOS() != 2 || !slices.Equal(tok.Encode("a"), []int32{3}) {
		t.Errorf("defaults: BOS %d EOS %d Encode(a) %v", tok.BOS(), tok.EOS(), tok.Encode("a"))
	}
	kv := append(slices.Clone(base), tensor.GGUFKV{Key: "tokenizer.ggml.add_bos_token", Value: false},
		tensor.GGUFKV{Key: "tokenizer.ggml.add_space_prefix", Value: false}, tensor.GGUFKV{Key: "tokenizer.ggml.eos_token_id", Value: uint32(0)})
	if tok, err = FromGGUF(ggufOf(t, kv)); err != nil {
		t.Fatal(err)
	}
	if tok.BOS() != -1 || tok.EOS() != 0 || !slices.Equal(tok.Encode("a"), []int32{4}) {
		t.Errorf("overrides: BOS %d EOS %d Encode(a) %v", tok.BOS(), tok.EOS(), tok.Encode("a"))
	}
}

// FuzzSPMRoundTrip checks on any bytes that encoding never panics, gives
// ids in range, and decodes back to the same bytes (byte fallback covers
// every byte), with and without the space prefix. (After a special token
// the space prefix adds a space, so texts with one are skipped there; a
// literal ▁ decodes as a space, so it is replaced.)
func FuzzSPMRoundTrip(f *testing.F) {
	for _, s := range []string{"abc", " a  bc ", "é\xff\xc3", "<s>a</s><tool>", "\u2581x", ""} {
		f.Add(s)
	}
	with, without := tinySPM(f, true), tinySPM(f, false)
	f.Fuzz(func(t *testing.T, text string) {
		for _, tk := range []*SPMTokenizer{with, without} {
			text := strings.ReplaceAll(text, "\u2581", "_")
			ids := tk.EncodeOrdinary(text)
			for _, id := range ids {
				if id < 0 || int(id) >= tk.VocabSize() {
					t.Fatalf("id %d out of range", id)
				}
			}
			special := strings.Contains(text, "<")
			if got := tk.DecodeBytes(ids); (!special || tk == without) && !bytes.Equal(got, []byte(text)) {
				t.Fatalf("DecodeBytes(EncodeOrdinary(%q)) = %q", text, got)
			}
			if !special && utf8.ValidString(text) && tk.Decode(tk.Encode(text)) != text {
				t.Fatalf("Decode(Encode(%q)) = %q", text, tk.Decode(tk.Encode(text)))
			}
		}
	})
}

// FuzzSPMFromGGUF feeds arbitrary files to the GGUF reader and, where they
// parse, to the tokenizer builder: errors, never a panic or a huge
// allocation (the GGUF reader caps counts by the bytes left).
func FuzzSPMFromGGUF(f *testing.F) {
	toks := []string{"<unk>", "<s>", "</s>", "<0x41>", "▁a", "a"}
	var buf bytes.Buffer
	kv := []tensor.GGUFKV{{Key: "tokenizer.ggml.model", Value: "llama"}, {Key: "tokenizer.ggml.tokens", Value: toks},
		{Key: "tokenizer.ggml.scores", Value: []float32{0, 0, 0, 0, -1, -2}},
		{Key: "tokenizer.ggml.token_type", Value: []int32{2, 3, 3, 6, 1, 1}}, {Key: "tokenizer.ggml.bos_token_id", Value: uint32(1)}}
	if err := tensor.WriteGGUF(&buf, kv, nil); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := tensor.ParseGGUF(data)
		if err != nil {
			return
		}
		tok, err := FromGGUF(g)
		if err != nil {
			return
		}
		ids := tok.Encode("a <s>A\u00e9")
		for _, id := range ids {
			if id < 0 || int(id) >= tok.VocabSize() {
				t.Fatalf("id %d out of range", id)
			}
		}
		_ = tok.Decode(ids)
	})
}
