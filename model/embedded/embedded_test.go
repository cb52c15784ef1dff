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
	dir := t.TempDir()
	if err := embedded.Write(dir); err != nil {
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
	ids := append([]int32{b.Config.BOS}, tok.Encode(text)...)
	h, err := b.Forward(ids[:len(ids)-1], []int{model.FinalLayer})
	if err != nil {
		t.Fatal(err)
	}
	T, V := len(ids)-1, b.Config.Vocab
	logits := b.Logits(h[0], T)
	var loss float64
	for i := range T {
		row := logits[i*V : (i+1)*V]
		loss += tensor.LogSumExp(row) - float64(row[ids[i+1]])
	}
	loss /= float64(T)
	t.Logf("loss on a held-out sentence: %.3f nats/token over %d tokens (ln V = %.3f)", loss, T, math.Log(float64(V)))
	if loss > 5.5 {
		t.Errorf("loss %.3f nats/token on plain English: the embedded base does not look trained (ln V = %.3f)", loss, math.Log(float64(V)))
	}
}
