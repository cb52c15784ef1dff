package dataset

import (
	"slices"
	"testing"
)

func TestFinalAnswer(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"so 3+4=7\n#### 7", "7", true},
		{"#### 1,234", "1234", true},
		{"####  $-12.50 dollars", "-12.5", true},
		{"#### 3.000", "3", true},
		{"#### 10.0", "10", true},
		{"the answer is 7", "", false},
		{"#### none", "", false},
	} {
		got, ok := FinalAnswer(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("FinalAnswer(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestEncodePairPrompt checks the template and which tokens are trained.
func TestEncodePairPrompt(t *testing.T) {
	ex := EncodePair(byteTok, Prompt("2+2?"), "4")
	want := bytesOf("Question: 2+2?\nAnswer: 4") // BOS, bytes, EOS
	if !slices.Equal(ex.Tokens, want) {
		t.Fatalf("tokens %v, want %v", ex.Tokens, want)
	}
	np := 1 + len("Question: 2+2?\nAnswer: ")
	if p := ex.PromptLen(); p != np {
		t.Errorf("PromptLen %d, want %d", p, np)
	}
	for i, l := range ex.Loss {
		if l != (i >= np) {
			t.Errorf("Loss[%d] = %v", i, l)
		}
	}
}
