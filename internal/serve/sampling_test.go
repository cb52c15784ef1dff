package serve

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

	"carryon/carryon"
	"carryon/model"
	"carryon/tokenizer"
)

// oracle is what carryon.GenerateIDs, the shared generator, gives for opt.
func oracle(t testing.TB, b *model.Base, prompt string, opt carryon.GenerateOptions) string {
	t.Helper()
	opt.Stop = []int32{tokenizer.ByteTokEOS}
	out, _, err := carryon.GenerateIDs(b, nil, 1, promptIDs(prompt), opt)
	if err != nil {
		t.Fatal(err)
	}
	return tokenizer.ByteTokenizer{}.Decode(out)
}

// TestSamplingParameters: top_p, presence_penalty, frequency_penalty and
// seed reach the sampler: the server's text equals the shared generator's
// with the same options, and differs from what it gives without them.
func TestSamplingParameters(t *testing.T) {
	b := tinyBase(t, 256)
	_, hs := newServer(t, Config{Base: b})
	const prompt, n = "Sampling: ", 40
	text := func(req map[string]any) string {
		req["model"], req["prompt"], req["max_tokens"] = "base", prompt, n
		return completion(t, hs.URL, req).Choices[0].Text
	}
	greedy := oracle(t, b, prompt, carryon.GenerateOptions{MaxTokens: n})
	sampled := oracle(t, b, prompt, carryon.GenerateOptions{MaxTokens: n, Temperature: 1.5, Seed: 11})
	if got := text(map[string]any{"temperature": 1.5, "seed": 11}); got != sampled {
		t.Errorf("seed 11: %q, want %q", got, sampled)
	}
	if sampled == greedy {
		t.Fatalf("test setup: sampling at T=1.5 gave the greedy text")
	}
	// A tiny top_p keeps the most likely token only: greedy at any temperature.
	if got := text(map[string]any{"temperature": 1.5, "seed": 11, "top_p": 1e-6}); got != greedy {
		t.Errorf("top_p 1e-6: %q, want the greedy text %q", got, greedy)
	}
	mid := oracle(t, b, prompt, carryon.GenerateOptions{MaxTokens: n, Temperature: 1.5, TopP: 0.5, Seed: 11})
	if got := text(map[string]any{"temperature": 1.5, "seed": 11, "top_p": 0.5}); got != mid {
		t.Errorf("top_p 0.5: %q, want %q", got, mid)
	}
	for _, tc := range []struct {
		field string
		opt   carryon.GenerateOptions
	}{
		{"presence_penalty", carryon.GenerateOptions{MaxTokens: n, PresencePenalty: 2}},
		{"frequency_penalty", carryon.GenerateOptions{MaxTokens: n, FrequencyPenalty: 2}},
		{"frequency_penalty", carryon.GenerateOptions{MaxTokens: n, FrequencyPenalty: -2}},
	} {
		v := tc.opt.PresencePenalty + tc.opt.FrequencyPenalty
		want := oracle(t, b, prompt, tc.opt)
		if want == greedy {
			t.Fatalf("test setup: %s %v does not change the greedy text", tc.field, v)
		}
		if got := text(map[string]any{"temperature": 0, tc.field: v}); got != want {
			t.Errorf("%s %v: %q, want %q", tc.field, v, got, want)
		}
	}
}

// forwardLogprobs returns, for each position i ≥ 1 of ids, the base's
// log-probability of ids[i] after ids[:i], from one whole forward pass
// (an oracle independent of the incremental decoder).
func forwardLogprobs(t testing.TB, b *model.Base, ids []int32) []float64 {
	t.Helper()
	_, y, err := carryon.ForwardStages(b, nil, 1, ids, "")
	if err != nil {
		t.Fatal(err)
	}
	D, V := b.Config.Dim, b.Config.Vocab
	logits := make([]float32, V)
	out := make([]float64, len(ids))
	out[0] = math.NaN()
	for i := 1; i < len(ids); i++ {
		b.LogitsInto(logits, y[(i-1)*D:i*D], 1)
		var z float64
		for _, v := range logits {
			z += math.Exp(float64(v))
		}
		out[i] = float64(logits[ids[i]]) - math.Log(z)
	}
	return out
}

// TestLogprobs: completions' logprobs (with echo, streamed or not) and
// chat's logprobs/top_logprobs give each token's log-probability as a
// whole forward pass computes it, and the most likely tokens, most likely
// first.
func TestLogprobs(t *testing.T) {
	b := tinyBase(t, 256)
	_, hs := newServer(t, Config{Base: b})
	const prompt, n = "Logprobs", 12
	gen, _ := expect(t, b, nil, 1, promptIDs(prompt), n)
	all := append(promptIDs(prompt), gen...)
	want := forwardLogprobs(t, b, all)
	P := len(promptIDs(prompt))
	near := func(a float64, b float64) bool { return math.Abs(a-b) < 1e-3 }

	req := map[string]any{"model": "base", "prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 3, "echo": true}
	r := completion(t, hs.URL, req)
	lp := r.Choices[0].Logprobs
	// The prompt's tokens after BOS, then the generated ones.
	if lp == nil || len(lp.Tokens) != len(all)-1 || len(lp.TokenLogprobs) != len(all)-1 || len(lp.TopLogprobs) != len(all)-1 || len(lp.TextOffset) != len(all)-1 {
		t.Fatalf("logprobs %+v: want %d entries", lp, len(all)-1)
	}
	if r.Choices[0].Text != prompt+(tokenizer.ByteTokenizer{}).Decode(gen) {
		t.Errorf("echo text %q", r.Choices[0].Text)
	}
	for k := range lp.Tokens {
		i := k + 1 // position in all
		if lp.TokenLogprobs[k] == nil || !near(*lp.TokenLogprobs[k], want[i]) {
			t.Errorf("token %d %q: logprob %v, forward pass %v", k, lp.Tokens[k], lp.TokenLogprobs[k], want[i])
		}
		// Up to 3: tokens that read the same (a part of a character
		// shows as U+FFFD) share a key.
		if n := len(lp.TopLogprobs[k]); n < 1 || n > 3 {
			t.Errorf("token %d: %d top logprobs, want 1..3", k, n)
		}
		if off := len(tokenizer.ByteTokenizer{}.Decode(all[1:i])); lp.TextOffset[k] != off {
			t.Errorf("token %d: text_offset %d, want %d", k, lp.TextOffset[k], off)
		}
		if i >= P { // generated greedily: the most likely token
			best := math.Inf(-1)
			for _, v := range lp.TopLogprobs[k] {
				best = max(best, v)
			}
			if !near(best, *lp.TokenLogprobs[k]) {
				t.Errorf("greedy token %d: logprob %v, the most likely has %v", k, *lp.TokenLogprobs[k], best)
			}
		}
	}
	// Without echo: the generated tokens only, offsets from 0.
	delete(req, "echo")
	r2 := completion(t, hs.URL, req)
	if lp2 := r2.Choices[0].Logprobs; lp2 == nil || len(lp2.Tokens) != len(gen) || lp2.TextOffset[0] != 0 || !near(*lp2.TokenLogprobs[0], want[P]) {
		t.Errorf("logprobs without echo: %+v", lp2)
	}
	// Streamed, the chunks' logprobs add up to the same.
	events, done := postStream(t, hs.URL+"/v1/completions", req)
	var streamed []float64
	for _, ev := range events {
		var c CompletionResponse
		json.Unmarshal([]byte(ev), &c)
		if len(c.Choices) == 1 && c.Choices[0].Logprobs != nil {
			for _, v := range c.Choices[0].Logprobs.TokenLogprobs {
				streamed = append(streamed, *v)
			}
		}
	}
	if !done || len(streamed) != len(gen) {
		t.Fatalf("streamed %d logprobs, want %d", len(streamed), len(gen))
	}
	for k, v := range streamed {
		if !near(v, want[P+k]) {
			t.Errorf("streamed token %d: %v, want %v", k, v, want[P+k])
		}
	}

	// Chat.
	msgs := []map[string]any{{"role": "user", "content": "Hi"}}
	code, body := post(t, hs.URL+"/v1/chat/completions", map[string]any{"model": "base", "messages": msgs, "max_tokens": n,
		"temperature": 0, "logprobs": true, "top_logprobs": 2})
	if code != 200 {
		t.Fatalf("chat: %d %s", code, body)
	}
	var cr ChatResponse
	json.Unmarshal(body, &cr)
	chatPrompt := promptIDs("<|user|>\nHi\n<|assistant|>\n")
	cgen, _ := expect(t, b, nil, 1, chatPrompt, n)
	cwant := forwardLogprobs(t, b, append(chatPrompt, cgen...))
	cl := cr.Choices[0].Logprobs
	if cl == nil || len(cl.Content) != cr.Usage.CompletionTokens {
		t.Fatalf("chat logprobs %s: want %d entries", body, cr.Usage.CompletionTokens)
	}
	for k, c := range cl.Content {
		if !near(c.Logprob, cwant[len(chatPrompt)+k]) || len(c.TopLogprobs) != 2 || len(c.Bytes) != 1 || c.Bytes[0] != int(cgen[k]) {
			t.Errorf("chat token %d: %+v, want logprob %v, 2 alternatives, bytes [%d]", k, c, cwant[len(chatPrompt)+k], cgen[k])
		}
		if c.TopLogprobs[0].Logprob < c.TopLogprobs[1].Logprob || !near(c.TopLogprobs[0].Logprob, c.Logprob) {
			t.Errorf("chat token %d: alternatives %+v not most likely first, or the greedy token not the first", k, c.TopLogprobs)
		}
	}
	// Without logprobs: null.
	code, body = post(t, hs.URL+"/v1/chat/completions", map[string]any{"model": "base", "messages": msgs, "max_tokens": 2})
	if code != 200 || !strings.Contains(string(body), `"logprobs":null`) {
		t.Errorf("chat without logprobs: %d %s", code, body)
	}
}

// TestChatSamplingStreamed: chat takes the same sampling parameters, and
// its stream carries the same logprobs as its non-streamed answer.
func TestChatSamplingStreamed(t *testing.T) {
	b := tinyBase(t, 256)
	_, hs := newServer(t, Config{Base: b})
	msgs := []map[string]any{{"role": "user", "content": "Tell me"}}
	chat := func(req map[string]any) ChatResponse {
		req["model"], req["messages"], req["max_tokens"] = "base", msgs, 16
		code, body := post(t, hs.URL+"/v1/chat/completions", req)
		if code != 200 {
			t.Fatalf("chat %v: %d %s", req, code, body)
		}
		var r ChatResponse
		json.Unmarshal(body, &r)
		return r
	}
	greedy := chat(map[string]any{"temperature": 0}).Choices[0].Message.Content
	if got := chat(map[string]any{"temperature": 1.5, "seed": 3, "top_p": 1e-6}).Choices[0].Message.Content; got != greedy {
		t.Errorf("chat top_p 1e-6: %q, want the greedy %q", got, greedy)
	}
	if got := chat(map[string]any{"temperature": 0, "frequency_penalty": 2}).Choices[0].Message.Content; got == greedy {
		t.Errorf("chat frequency_penalty 2 gave the greedy text %q", got)
	}
	want := chat(map[string]any{"temperature": 0, "logprobs": true, "top_logprobs": 1}).Choices[0].Logprobs
	events, _ := postStream(t, hs.URL+"/v1/chat/completions", map[string]any{"model": "base", "messages": msgs,
		"max_tokens": 16, "temperature": 0, "logprobs": true, "top_logprobs": 1})
	var got []TokenLogprob
	for _, ev := range events {
		var c ChatResponse
		json.Unmarshal([]byte(ev), &c)
		if len(c.Choices) == 1 && c.Choices[0].Logprobs != nil {
			got = append(got, c.Choices[0].Logprobs.Content...)
		}
	}
	if want == nil || len(got) != len(want.Content) || len(got) == 0 {
		t.Fatalf("streamed %d logprobs, non-streamed %v", len(got), want)
	}
	for i := range got {
		if got[i].Token != want.Content[i].Token || got[i].Logprob != want.Content[i].Logprob {
			t.Errorf("token %d: streamed %+v, non-streamed %+v", i, got[i], want.Content[i])
		}
	}
}
