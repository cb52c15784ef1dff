package embedded_test

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"carryon/model"
	"carryon/model/embedded"
	"carryon/tensor"
	"carryon/tokenizer"
)

// TestEmbeddedBase writes the shipped base out and checks that the normal
// loaders read it, that it fits the size budget, and that it is a trained
// language model: on English it has never seen, its loss is far below the
// uniform ln V (an untrained model sits at about ln V).
func TestEmbeddedBase(t *testing.T) {
	// The default base read a tenth of an epoch of mixed text, much of it
	// archaic or generated: its English is worse than the tiny base's, its
	// arithmetic far better (model/embedded/base/README.md).
	t.Run("default", func(t *testing.T) { checkBase(t, embedded.Write, 6.5, 2.0) })
	t.Run("tiny", func(t *testing.T) { checkBase(t, embedded.WriteTiny, 5.5, 0) })
}

// arithmetic is a problem in the generated corpus's form (not in it).
const arithmetic = "Question: Tara has 12 shells. She gets 7 more shells. How many shells does she have now?\nAnswer: Tara has 12+7 = <<12+7=19>>19 shells now.\n#### 19"

// checkBase checks a written base; its loss must stay under englishMax on
// an English sentence and, when arithMax > 0, under arithMax on a problem
// in GSM8K's notation.
func checkBase(t *testing.T, write func(string) error, englishMax, arithMax float64) {
	dir := t.TempDir()
	if err := write(dir); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, name := range embedded.Files {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		total += st.Size()
	}
	if total > 12<<20 {
		t.Errorf("embedded base is %d bytes, over the 12 MiB budget", total)
	}
	b, err := model.LoadBase(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tok, err := tokenizer.LoadTokenizer(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != b.Config.Vocab || tok.EOS() != b.Config.EOS || b.Config.EOS < 0 {
		t.Fatalf("tokenizer vocab %d EOS %d, model vocab %d EOS %d", tok.VocabSize(), tok.EOS(), b.Config.Vocab, b.Config.EOS)
	}
	text := "The committee said on Monday that the new school would be built in the spring, and the members of the board agreed that the cost was not too high."
	if got := tok.Decode(tok.Encode(text)); got != text {
		t.Fatalf("tokenizer round trip: %q", got)
	}
	V := b.Config.Vocab
	lossOf := func(text string) (float64, int) {
		ids := append([]int32{b.Config.BOS}, tok.Encode(text)...)
		h, err := b.Forward(ids[:len(ids)-1], []int{model.FinalLayer})
		if err != nil {
			t.Fatal(err)
		}
		T := len(ids) - 1
		logits := b.Logits(h[0], T)
		var loss float64
		for i := range T {
			row := logits[i*V : (i+1)*V]
			loss += tensor.LogSumExp(row) - float64(row[ids[i+1]])
		}
		return loss / float64(T), T
	}
	loss, T := lossOf(text)
	t.Logf("loss on a held-out sentence: %.3f nats/token over %d tokens (ln V = %.3f)", loss, T, math.Log(float64(V)))
	if loss > englishMax {
		t.Errorf("loss %.3f nats/token on plain English, over %.1f: the embedded base does not look trained (ln V = %.3f)", loss, englishMax, math.Log(float64(V)))
	}
	la, Ta := lossOf(arithmetic)
	t.Logf("loss on a generated-style arithmetic problem: %.3f nats/token over %d tokens", la, Ta)
	if arithMax > 0 && la > arithMax {
		t.Errorf("loss %.3f nats/token on arithmetic in GSM8K's notation, over %.1f: the base did not learn its generated part", la, arithMax)
	}
}

// TestBasesShareTokenizer: the default and tiny bases read the same token
// ids (one tokenizer.json), which a mixture of the two (coordinator
// Config.Mix, `carryon train --mix`) needs.
func TestBasesShareTokenizer(t *testing.T) {
	var toks []tokenizer.Tokenizer
	for _, write := range []func(string) error{embedded.Write, embedded.WriteTiny} {
		dir := t.TempDir()
		if err := write(dir); err != nil {
			t.Fatal(err)
		}
		tok, err := tokenizer.LoadTokenizer(filepath.Join(dir, "tokenizer.json"))
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	if err := tokenizer.Same(toks[0], toks[1]); err != nil {
		t.Fatalf("default and tiny bases: %v", err)
	}
	if n := toks[0].VocabSize(); n != 4096 {
		t.Errorf("vocabulary of %d tokens, want 4096", n)
	}
}
