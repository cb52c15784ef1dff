package serve

// Generation for a terminal (`carryon generate`, and its interactive chat
// mode): the same sampler, stop handling and chat template as the HTTP
// API, with the text written as it is decided.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"carryon/carryon"
	"carryon/model"
	"carryon/tokenizer"
)

// StreamResult is the outcome of Stream.
type StreamResult struct {
	Text         string
	PromptTokens int
	Tokens       int           // generated (a stop token excluded)
	Finish       string        // "stop" (a stop token or string) or "length"
	FirstToken   time.Duration // from the start to the first sampled token (prefill included)
	Total        time.Duration
}

// TokensPerSec is the decoding speed: tokens after the first per second
// after the first (0 with fewer than two tokens).
func (r StreamResult) TokensPerSec() float64 {
	if r.Tokens < 2 || r.Total <= r.FirstToken {
		return 0
	}
	return float64(r.Tokens-1) / (r.Total - r.FirstToken).Seconds()
}

// Stream generates after prompt (token ids) with base, stages and opt,
// writing the text to w as soon as it is decided (model.TextStream: never
// inside a possible stop string or an incomplete character), and ends at
// the tokenizer's EOS, opt.Stop, the first of stops, MaxTokens or when ctx
// ends (then it returns ctx's error with what it has).
func Stream(ctx context.Context, w io.Writer, b *model.Base, tok tokenizer.Tokenizer, stages []*carryon.Model, alpha float32,
	prompt []int32, stops []string, opt carryon.GenerateOptions) (StreamResult, error) {
	if eos := tok.EOS(); eos >= 0 {
		opt.Stop = append(append([]int32(nil), opt.Stop...), eos)
	}
	stopIDs := map[int32]bool{b.Config.EOS: true}
	for _, id := range opt.Stop {
		stopIDs[id] = true
	}
	res := StreamResult{PromptTokens: len(prompt)}
	ts := model.NewTextStream(func(ids []int32) string { return tokenizer.DecodeContinuation(tok, ids) }, stops)
	start := time.Now()
	var werr error
	opt.OnToken = func(id int32) bool {
		if res.FirstToken == 0 {
			res.FirstToken = time.Since(start)
		}
		switch {
		case ctx.Err() != nil:
			return false
		case stopIDs[id]:
			return true // GenerateIDs ends on it
		}
		piece, more := ts.Add(id)
		if piece != "" {
			if _, werr = io.WriteString(w, piece); werr != nil {
				return false
			}
		}
		return more
	}
	_, stopped, err := carryon.GenerateIDs(b, stages, alpha, prompt, opt)
	res.Total = time.Since(start)
	if err == nil {
		err = werr
	}
	rest, text, hit := ts.Finish()
	res.Text, res.Tokens, res.Finish = text, len(ts.Tokens()), "length"
	if hit || stopped {
		res.Finish = "stop"
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return res, err
	}
	if _, err := io.WriteString(w, rest); err != nil {
		return res, err
	}
	return res, nil
}

// Conversation is a chat kept across turns, rendered with the server's chat
// template: each turn renders the whole conversation again.
type Conversation struct {
	tok       tokenizer.Tokenizer
	tmpl      chatTemplate
	msgs      []chatMsg
	maxPos    int // prompt plus answer, in tokens
	dropped   int // turns dropped to fit the context
	hasSystem bool
}

// NewConversation starts a conversation with an optional system message;
// maxPos caps a turn's prompt plus answer (the base's context).
func NewConversation(tok tokenizer.Tokenizer, system string, maxPos int) *Conversation {
	c := &Conversation{tok: tok, tmpl: newChatTemplate(tok), maxPos: maxPos}
	if system != "" {
		c.msgs, c.hasSystem = []chatMsg{{"system", system}}, true
	}
	return c
}

// ErrTurnTooLong is Conversation.Ask's error when a message does not fit
// the context even alone.
var ErrTurnTooLong = errors.New("the message does not fit the context")

// Ask adds the user's message and returns the prompt of the assistant's
// answer (of at most maxTokens tokens), and the template's stop tokens and
// strings. The oldest turns are dropped (the system message kept) while the
// prompt and answer would not fit the context; Dropped counts them.
func (c *Conversation) Ask(user string, maxTokens int) (ids, stopIDs []int32, stopStrs []string, err error) {
	c.msgs = append(c.msgs, chatMsg{"user", user})
	for {
		ids, stopIDs, stopStrs = c.tmpl.render(c.tok, c.msgs)
		if len(ids)+maxTokens <= c.maxPos {
			return ids, stopIDs, stopStrs, nil
		}
		first := 0
		if c.hasSystem {
			first = 1
		}
		if len(c.msgs)-first <= 1 { // the new message alone
			c.msgs = c.msgs[:len(c.msgs)-1]
			return nil, nil, nil, fmt.Errorf("%w: %d tokens of prompt and %d of answer, the context holds %d", ErrTurnTooLong, len(ids), maxTokens, c.maxPos)
		}
		c.msgs = append(c.msgs[:first], c.msgs[first+1:]...)
		c.dropped++
	}
}

// Answer records the assistant's answer to the last message.
func (c *Conversation) Answer(text string) { c.msgs = append(c.msgs, chatMsg{"assistant", text}) }

// Dropped returns how many messages were dropped to fit the context.
func (c *Conversation) Dropped() int { return c.dropped }

// Messages returns the number of messages kept.
func (c *Conversation) Messages() int { return len(c.msgs) }
