package tokenizer

import (
	"strings"
	"testing"
)

func TestSame(t *testing.T) {
	mk := func(vocab ...string) Tokenizer {
		t.Helper()
		tok, err := NewBPETokenizer(vocab, nil, PretokQwen2, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if err := Same(ByteTokenizer{}, ByteTokenizer{}); err != nil {
		t.Errorf("a tokenizer against itself: %v", err)
	}
	if err := Same(mk("a", "b", "c"), mk("a", "b", "c")); err != nil {
		t.Errorf("equal vocabularies: %v", err)
	}
	for _, c := range []struct {
		a, b Tokenizer
		want string
	}{
		{mk("a", "b", "c"), mk("a", "x", "c"), `token 1 is "b" against "x"`},
		{mk("a", "b", "c"), mk("a", "b"), "3 tokens against 2"},
		{ByteTokenizer{}, mk("a"), "259 tokens against 1"},
	} {
		if err := Same(c.a, c.b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Same = %v, want an error saying %q", err, c.want)
		}
	}
}
