package tokenizer

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// bpeTrainTexts is a small corpus with the cases the Qwen2 pre-tokenizer
// treats specially: contractions, digits, punctuation runs, newlines and
// runs of spaces, non-ASCII letters, and a decomposed é (NFC composes it).
var bpeTrainTexts = []string{
	"The jury said it didn't find that many of the registration laws were outmoded.\n",
	"The jury further said the City Executive Committee, which had over-all charge of the election, deserves praise.\n\n",
	"In 1961 the county spent $3,456.78 on 12 elections;   the others  were   cheaper!!! (Really?)\n",
	"Café crème, naïve cafe\u0301 — 日本語のテキスト and emoji 🙂🙂 too.\r\n",
	"She'll say they've gone, we're sure I'm right, YOU'LL SEE. The the the then there these those.\n",
	"the jury the jury the jury said said said; election election election\t\tend\n",
}

func trainSmallBPE(t *testing.T, vocab int) *BPEVocab {
	t.Helper()
	v, err := TrainBPE(bpeTrainTexts, vocab, []string{"<|endoftext|>"})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestTrainBPELoaderAgrees writes the trained tokenizer as tokenizer.json,
// reads it back with LoadTokenizer, and checks that the loader (rank-based
// merging, HF's algorithm) encodes exactly as the trainer does (the final
// segmentation of training words, merges applied in learned order for new
// words), that decoding round-trips, and that the special token is the EOS.
func TestTrainBPELoaderAgrees(t *testing.T) {
	v := trainSmallBPE(t, 300)
	if v.VocabSize() != 300 || len(v.Merges) != 300-257 {
		t.Fatalf("vocab %d with %d merges, want 300 with 43", v.VocabSize(), len(v.Merges))
	}
	path := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(path, v.TokenizerJSON(), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := LoadTokenizer(path)
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != v.VocabSize() || tok.PreTokenizer() != PretokQwen2 {
		t.Fatalf("loaded vocab %d pre-tokenizer %q, want %d qwen2", tok.VocabSize(), tok.PreTokenizer(), v.VocabSize())
	}
	eot := v.SpecialID("<|endoftext|>")
	if eot != 299 || tok.EOS() != eot {
		t.Errorf("special id %d, loader EOS %d, want 299", eot, tok.EOS())
	}
	unseen := []string{
		"The registration of the jurors was outmoded in 2024.",
		"thethethe jury-rigged  elections\n\n\nend",
		"Über naïve ÇA 🙂 café",
		"",
		" leading and trailing spaces  ",
	}
	for _, text := range append(slices.Clone(bpeTrainTexts), unseen...) {
		want := v.Encode(text)
		got := tok.Encode(text)
		if !slices.Equal(got, want) {
			t.Errorf("%q: loader %v, trainer %v", text, got, want)
		}
		if dec := tok.Decode(got); dec != norm.NFC.String(text) {
			t.Errorf("%q decodes to %q", text, dec)
		}
	}
	// Training words compress: fewer tokens than bytes.
	all := strings.Join(bpeTrainTexts, "")
	if n := len(tok.Encode(all)); 3*n > 2*len(all) {
		t.Errorf("%d tokens for %d bytes of training text: merges are not being used", n, len(all))
	}
	ids := tok.Encode("the jury<|endoftext|>said")
	if !slices.Contains(ids, eot) {
		t.Errorf("special token not split out: %v", ids)
	}
}

// TestTrainBPEGreedyInvariant re-derives every merge by brute force: merge
// i must be the most frequent adjacent pair (ties: smallest ids) of the
// corpus segmented with merges 0..i-1. This checks the trainer's
// incremental pair bookkeeping.
func TestTrainBPEGreedyInvariant(t *testing.T) {
	v := trainSmallBPE(t, 310)
	var words [][]int32
	for _, text := range bpeTrainTexts {
		forEachPretoken(text, func(w string) {
			s := make([]int32, len(w))
			for i := range len(w) {
				s[i] = int32(w[i])
			}
			words = append(words, s)
		})
	}
	for i, m := range v.Merges {
		counts := map[[2]int32]int{}
		for _, w := range words {
			for j := 0; j+1 < len(w); j++ {
				counts[[2]int32{w[j], w[j+1]}]++
			}
		}
		best, bestN := [2]int32{}, 0
		for p, n := range counts {
			if n > bestN || n == bestN && (p[0] < best[0] || p[0] == best[0] && p[1] < best[1]) {
				best, bestN = p, n
			}
		}
		if m != best {
			t.Fatalf("merge %d is %v (%q+%q), brute force picks %v with count %d", i, m, v.Tokens[m[0]], v.Tokens[m[1]], best, bestN)
		}
		if v.Tokens[256+i] != v.Tokens[m[0]]+v.Tokens[m[1]] {
			t.Fatalf("token %d is %q, want %q", 256+i, v.Tokens[256+i], v.Tokens[m[0]]+v.Tokens[m[1]])
		}
		for wi, w := range words {
			words[wi] = applyMerge(w, m, int32(256+i))
		}
	}
}

func TestTrainBPEDeterministicAndErrors(t *testing.T) {
	a, b := trainSmallBPE(t, 400), trainSmallBPE(t, 400)
	if !bytes.Equal(a.TokenizerJSON(), b.TokenizerJSON()) {
		t.Error("two trainings on the same text give different tokenizer.json")
	}
	// A tiny text runs out of repeated pairs before the vocabulary fills.
	small, err := TrainBPE([]string{"abab"}, 300, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(small.Merges) != 1 || small.VocabSize() != 257 {
		t.Errorf("abab: %d merges, vocab %d, want 1 and 257", len(small.Merges), small.VocabSize())
	}
	for _, bad := range []struct {
		vocab   int
		special []string
	}{{256, []string{"x"}}, {MaxBPEVocab + 1, nil}, {300, []string{"x", "x"}}, {300, []string{""}}} {
		if _, err := TrainBPE([]string{"text"}, bad.vocab, bad.special); err == nil {
			t.Errorf("vocab %d special %q: no error", bad.vocab, bad.special)
		}
	}
}

func TestDetagBrown(t *testing.T) {
	in := "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, that/cs Atlanta's/np$ (/( recent/jj )/) vote/nn ./.\n" +
		"It/pps was/bedz over/rb ;/. done/vbn !/.\n\n\n\tA/at new/jj paragraph/nn ?/.\n"
	want := "The jury said \"no evidence\", that Atlanta's (recent) vote. It was over; done!\nA new paragraph?\n"
	if got := DetagBrown(in); got != want {
		t.Errorf("DetagBrown:\n got %q\nwant %q", got, want)
	}
	if !looksBrownTagged(in) || looksBrownTagged("Plain text with a date 1/2 and nothing else to see here today.") {
		t.Error("looksBrownTagged misclassifies")
	}
}

func TestReadCorpus(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"ca01":         "\tThe/at jury/nn said/vbd it/pps did/dod find/vb that/cs many/ap of/in the/at laws/nns ./.\n",
		"plain.txt":    "Just plain text.\n",
		"README":       "not a document",
		"CONTENTS":     "index",
		".hidden":      "skip me",
		"empty":        "  \n",
		"sub/cb02":     "Another plain document.",
		"package.json": `{"name": "x"}`,
	}
	for name, text := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	docs, err := ReadCorpus(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"The jury said it did find that many of the laws.\n", "Just plain text.\n", "Another plain document."}
	if !slices.Equal(docs, want) {
		t.Errorf("ReadCorpus: %q, want %q", docs, want)
	}
	one, err := ReadCorpus(filepath.Join(dir, "plain.txt"))
	if err != nil || !slices.Equal(one, want[1:2]) {
		t.Errorf("single file: %q, %v", one, err)
	}
	if _, err := ReadCorpus(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing path: no error")
	}
}
