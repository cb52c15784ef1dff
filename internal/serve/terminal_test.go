package serve

import (
	"context"
	"errors"
	"strings"
	"testing"

	"carryon/carryon"
	"carryon/tokenizer"
)

// pieces records each write.
type pieces []string

func (p *pieces) Write(b []byte) (int, error) {
	*p = append(*p, string(b))
	return len(b), nil
}

// TestStream: the text comes out in pieces as it is generated (not all at
// the end), the pieces add up to the shared generator's text cut at the
// stop string, and the result counts tokens.
func TestStream(t *testing.T) {
	b := tinyBase(t, 256)
	tok := tokenizer.ByteTokenizer{}
	const n = 40
	ids := promptIDs("Stream this: ")
	full, _ := expect(t, b, nil, 1, ids, n)
	text := tok.Decode(full)
	var w pieces
	res, err := Stream(context.Background(), &w, b, tok, nil, 1, ids, nil, carryon.GenerateOptions{MaxTokens: n})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(w, "") != text || res.Text != text || res.Tokens != len(full) || res.PromptTokens != len(ids) {
		t.Errorf("streamed %q (%d tokens), want %q (%d)", strings.Join(w, ""), res.Tokens, text, len(full))
	}
	if len(w) < 5 {
		t.Errorf("%d writes for %d tokens: the text is not streamed", len(w), len(full))
	}
	if res.FirstToken <= 0 || res.Total < res.FirstToken {
		t.Errorf("timings %v %v", res.FirstToken, res.Total)
	}
	// A stop string cuts the text, streamed too.
	r := []rune(text)
	stop := string(r[5:8])
	w = nil
	res, err = Stream(context.Background(), &w, b, tok, nil, 1, ids, []string{stop}, carryon.GenerateOptions{MaxTokens: n})
	if err != nil {
		t.Fatal(err)
	}
	want := text[:strings.Index(text, stop)]
	if strings.Join(w, "") != want || res.Finish != "stop" {
		t.Errorf("with stop %q: %q (%s), want %q (stop)", stop, strings.Join(w, ""), res.Finish, want)
	}
	// A cancelled context stops it.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Stream(ctx, &w, b, tok, nil, 1, ids, nil, carryon.GenerateOptions{MaxTokens: n}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// TestConversation: turns accumulate in the chat template, and the oldest
// are dropped (the system message kept) when the context would overflow.
func TestConversation(t *testing.T) {
	tok := tokenizer.ByteTokenizer{}
	c := NewConversation(tok, "Be brief.", 120)
	ids, _, stops, err := c.Ask("Hi", 10)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tok.Decode(ids), "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"; got != want || len(stops) != 1 {
		t.Errorf("turn 1: %q %q, want %q", got, stops, want)
	}
	c.Answer("Hello.")
	ids, _, _, err = c.Ask("Bye", 10)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tok.Decode(ids), "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.\n<|user|>\nBye\n<|assistant|>\n"; got != want {
		t.Errorf("turn 2: %q, want %q", got, want)
	}
	c.Answer("Bye.")
	// 63 tokens so far with the next prompt; a long message forces drops.
	ids, _, _, err = c.Ask(strings.Repeat("x", 40), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids)+10 > 120 || c.Dropped() == 0 || !strings.HasPrefix(tok.Decode(ids), "<|system|>\nBe brief.\n") {
		t.Errorf("after a long message: %d tokens, %d dropped: %q", len(ids), c.Dropped(), tok.Decode(ids))
	}
	if _, _, _, err := c.Ask(strings.Repeat("y", 200), 10); !errors.Is(err, ErrTurnTooLong) {
		t.Errorf("a message over the context: %v", err)
	}
}
