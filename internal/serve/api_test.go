package serve

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"carryon/carryon"
	"carryon/internal/testenv"
	"carryon/tokenizer"
)

// TestUnsupportedParameters: a field this server does not implement is a
// 400 that names it, never ignored; the same field with a neutral value
// (OpenAI's default) asks for nothing and is accepted.
func TestUnsupportedParameters(t *testing.T) {
	b := tinyBase(t, 64)
	_, hs := newServer(t, Config{Base: b})
	cmpl := func(k string, v any) map[string]any {
		return map[string]any{"model": "base", "prompt": "a", "max_tokens": 2, k: v}
	}
	chat := func(k string, v any) map[string]any {
		return map[string]any{"model": "base", "messages": []map[string]any{{"role": "user", "content": "a"}}, "max_tokens": 2, k: v}
	}
	tool := []map[string]any{{"type": "function", "function": map[string]any{"name": "f"}}}
	for _, tc := range []struct {
		path  string
		body  map[string]any
		param string
		code  string
	}{
		{"/v1/chat/completions", chat("tools", tool), "tools", "unsupported_parameter"},
		{"/v1/chat/completions", chat("tool_choice", "auto"), "tool_choice", "unsupported_parameter"},
		{"/v1/chat/completions", chat("functions", tool), "functions", "unsupported_parameter"},
		{"/v1/chat/completions", chat("response_format", map[string]any{"type": "json_object"}), "response_format", "unsupported_parameter"},
		{"/v1/completions", cmpl("response_format", map[string]any{"type": "json_object"}), "response_format", "unsupported_parameter"},
		{"/v1/completions", cmpl("logit_bias", map[string]any{"50": 100}), "logit_bias", "unsupported_parameter"},
		{"/v1/completions", cmpl("best_of", 3), "best_of", "unsupported_parameter"},
		{"/v1/completions", cmpl("suffix", "end"), "suffix", "unsupported_parameter"},
		{"/v1/completions", cmpl("min_p", 0.1), "min_p", "unsupported_parameter"},
		{"/v1/completions", cmpl("grammar", "root ::= \"a\""), "grammar", "unsupported_parameter"},
		{"/v1/completions", cmpl("frobnicate", true), "frobnicate", "unknown_parameter"},
		{"/v1/chat/completions", chat("prompt", "a"), "prompt", "unknown_parameter"},
		{"/v1/completions", cmpl("messages", []any{}), "messages", "unknown_parameter"},
		{"/v1/completions", cmpl("top_logprobs", 2), "top_logprobs", "unknown_parameter"},
		{"/v1/chat/completions", chat("echo", true), "echo", "unknown_parameter"},
		{"/v1/completions", map[string]any{"model": "base", "prompt": "a", "stream": true, "stream_options": map[string]any{"include_usage": true, "chunk_size": 2}},
			"stream_options.chunk_size", "unknown_parameter"},
		{"/v1/chat/completions", map[string]any{"model": "base", "messages": []map[string]any{{"role": "user", "content": "a", "name": "bob"}}},
			"messages[0].name", "unsupported_parameter"},
		{"/v1/chat/completions", map[string]any{"model": "base", "messages": []map[string]any{{"role": "assistant", "content": "a", "tool_calls": tool}}},
			"messages[0].tool_calls", "unsupported_parameter"},
		{"/v1/chat/completions", map[string]any{"model": "base", "messages": []map[string]any{{"role": "user", "content": []map[string]any{{"type": "text", "text": "a", "cache_control": map[string]any{"type": "x"}}}}}},
			"messages[0].content[0].cache_control", "unknown_parameter"},
		{"/v1/chat/completions", chat("top_logprobs", 3), "top_logprobs", "invalid_value"}, // without logprobs: true
		{"/v1/completions", cmpl("presence_penalty", 2.5), "presence_penalty", "invalid_value"},
		{"/v1/completions", cmpl("frequency_penalty", -3), "frequency_penalty", "invalid_value"},
		{"/v1/completions", cmpl("logprobs", 21), "logprobs", "invalid_value"},
		{"/v1/completions", cmpl("top_p", 0), "top_p", "invalid_value"},
	} {
		code, body := post(t, hs.URL+tc.path, tc.body)
		e := apiError(t, code, body, http.StatusBadRequest)
		if e.Param == nil || *e.Param != tc.param || e.Code == nil || *e.Code != tc.code || !strings.Contains(e.Message, tc.param) {
			t.Errorf("%s %v: error %+v, want code %s naming %s", tc.path, tc.body, e, tc.code, tc.param)
		}
	}
	// Neutral values ask for nothing.
	for _, body := range []map[string]any{
		chat("tools", []any{}), chat("tools", nil), chat("response_format", map[string]any{"type": "text"}),
		chat("tool_choice", "none"), chat("n", 1), chat("store", false), chat("user", "alice"),
		chat("logit_bias", map[string]any{}), chat("parallel_tool_calls", true),
	} {
		if code, resp := post(t, hs.URL+"/v1/chat/completions", body); code != http.StatusOK {
			t.Errorf("%v: %d %s, want 200", body, code, resp)
		}
	}
	if code, resp := post(t, hs.URL+"/v1/completions", cmpl("best_of", 1)); code != http.StatusOK {
		t.Errorf("best_of 1: %d %s", code, resp)
	}
}

// TestEcho: with echo the prompt precedes the completion, streamed or not,
// for a text prompt and for token ids.
func TestEcho(t *testing.T) {
	b := tinyBase(t, 128)
	_, hs := newServer(t, Config{Base: b})
	const prompt = "Echo me: "
	want, _ := expect(t, b, nil, 1, promptIDs(prompt), 10)
	gen := tokenizer.ByteTokenizer{}.Decode(want)
	for _, p := range []any{prompt, promptIDs(prompt)} {
		req := func() map[string]any {
			return map[string]any{"model": "base", "prompt": p, "max_tokens": 10, "temperature": 0, "echo": true}
		}
		r := completion(t, hs.URL, req())
		if got := r.Choices[0].Text; got != prompt+gen {
			t.Errorf("echo %v: %q, want %q", p, got, prompt+gen)
		}
		if text, _, _ := streamCompletion(t, hs.URL, req()); text != prompt+gen {
			t.Errorf("echo %v streamed: %q, want %q", p, text, prompt+gen)
		}
	}
	noEcho := completion(t, hs.URL, map[string]any{"model": "base", "prompt": prompt, "max_tokens": 10, "temperature": 0})
	if noEcho.Choices[0].Text != gen {
		t.Errorf("without echo: %q, want %q", noEcho.Choices[0].Text, gen)
	}
}

// metricValue returns the value of the sample line that starts with name
// (labels included) in a Prometheus exposition.
func metricValue(t testing.TB, text, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("no metric %s in:\n%s", name, text)
	return 0
}

func get(t testing.TB, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	resp, body := testenv.Fetch(t, req)
	return resp.StatusCode, string(body)
}

func TestHealthAndMetrics(t *testing.T) {
	b := tinyBase(t, 128)
	var g Gate
	gs := httptest.NewServer(&g)
	defer gs.Close()
	// Before the model is loaded: 503, and /health says so.
	code, body := get(t, gs.URL+"/health")
	var h Health
	if json.Unmarshal([]byte(body), &h); code != http.StatusServiceUnavailable || h.Status != "loading" {
		t.Errorf("health while loading: %d %s", code, body)
	}
	c, resp := post(t, gs.URL+"/v1/completions", map[string]any{"model": "base", "prompt": "a"})
	if e := apiError(t, c, resp, http.StatusServiceUnavailable); e.Code == nil || *e.Code != "loading" {
		t.Errorf("completion while loading: %+v", e)
	}

	s, err := New(Config{Base: b, Tokenizer: tokenizer.ByteTokenizer{}, Workers: 2, MaxQueue: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g.Open(s)
	code, body = get(t, gs.URL+"/health")
	if json.Unmarshal([]byte(body), &h); code != http.StatusOK || h.Status != "ok" || h.Models != 1 || h.Workers != 2 {
		t.Errorf("health: %d %s", code, body)
	}
	r := completion(t, gs.URL, map[string]any{"model": "base", "prompt": "abc", "max_tokens": 5, "temperature": 0})
	post(t, gs.URL+"/v1/completions", map[string]any{"model": "base", "prompt": "abc", "tools": []int{1}})
	code, text := get(t, gs.URL+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for name, want := range map[string]float64{
		`carryon_serve_requests_total{code="200",endpoint="/v1/completions"}`:      1,
		`carryon_serve_requests_total{code="400",endpoint="/v1/completions"}`:      1,
		`carryon_serve_requests_total{code="200",endpoint="/health"}`:              1,
		"carryon_serve_generated_tokens_total":                                     float64(r.Usage.CompletionTokens + boolInt(*r.Choices[0].FinishReason == "stop")),
		"carryon_serve_prompt_tokens_total":                                        float64(r.Usage.PromptTokens),
		"carryon_serve_queue_depth":                                                0,
		"carryon_serve_running":                                                    0,
		"carryon_serve_workers":                                                    2,
		"carryon_serve_queue_capacity":                                             7,
		"carryon_serve_models":                                                     1,
		`carryon_serve_request_duration_seconds_count{endpoint="/v1/completions"}`: 2,
		"carryon_serve_time_to_first_token_seconds_count":                          1,
	} {
		if got := metricValue(t, text, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if v := metricValue(t, text, "carryon_serve_tokens_per_second"); v <= 0 {
		t.Errorf("tokens per second %v after a generation, want > 0", v)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestFairQueue: with one worker busy, client a queues four requests and
// then client b two; they are served round-robin (a b a b a a), not in
// arrival order, and the queue depth shows in /metrics meanwhile.
func TestFairQueue(t *testing.T) {
	b := tinyBase(t, 64)
	events := make(chan [2]string, 64)
	s, hs := newServer(t, Config{Base: b, Workers: 1, MaxQueue: 16,
		schedHook: func(ev, client string) { events <- [2]string{ev, client} }})
	hold := make(chan struct{})
	var once sync.Once
	s.tokenHook = func(ctx context.Context, n int) { once.Do(func() { <-hold }) }
	waitFor := func(want string) string {
		for ev := range events {
			if ev[0] == want {
				return ev[1]
			}
		}
		return ""
	}
	var wg sync.WaitGroup
	send := func(user string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, body := post(t, hs.URL+"/v1/completions", map[string]any{"model": "base", "prompt": "x", "max_tokens": 2, "user": user}); code != 200 {
				t.Errorf("user %s: %d %s", user, code, body)
			}
		}()
	}
	send("a")
	if c := waitFor("granted"); c != "user:a" {
		t.Fatalf("first grant to %q", c)
	}
	for _, u := range []string{"a", "a", "a", "a", "b", "b"} {
		send(u)
		waitFor("queued")
	}
	_, text := get(t, hs.URL+"/metrics")
	if q := metricValue(t, text, "carryon_serve_queue_depth"); q != 6 {
		t.Errorf("queue depth %v, want 6", q)
	}
	close(hold)
	var order []string
	for len(order) < 6 {
		c := waitFor("granted")
		order = append(order, strings.TrimPrefix(c, "user:"))
	}
	wg.Wait()
	if got := strings.Join(order, " "); got != "a b a b a a" {
		t.Errorf("served %s, want round-robin a b a b a a", got)
	}
}

// TestManyClients: 100 clients at once, two workers and the default
// queue: while the two workers are held, all the others wait in the queue
// (none gets 503 server_busy), and then every one is answered with the
// text its prompt gives alone.
func TestManyClients(t *testing.T) {
	const clients = 100
	b := tinyBase(t, 64)
	events := make(chan string, 3*clients)
	s, hs := newServer(t, Config{Base: b, Workers: 2, schedHook: func(ev, _ string) { events <- ev }})
	hold := make(chan struct{})
	s.tokenHook = func(context.Context, int) { <-hold }
	want := make([]string, clients)
	for i := range want {
		ids, _ := expect(t, b, nil, 1, promptIDs(fmt.Sprint(i)), 4)
		want[i] = tokenizer.ByteTokenizer{}.Decode(ids)
	}
	var wg sync.WaitGroup
	got := make([]string, clients)
	codes := make([]int, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			js, _ := json.Marshal(map[string]any{"model": "base", "prompt": fmt.Sprint(i), "max_tokens": 4, "temperature": 0, "user": fmt.Sprint("client", i)})
			resp, err := http.Post(hs.URL+"/v1/completions", "application/json", bytes.NewReader(js))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			codes[i] = resp.StatusCode
			var r CompletionResponse
			if err := json.NewDecoder(resp.Body).Decode(&r); err == nil && len(r.Choices) == 1 {
				got[i] = r.Choices[0].Text
			}
		}()
	}
	// Each arrival is one event: granted (the first two), queued or busy.
	arrived := map[string]int{}
	for range clients {
		arrived[<-events]++
	}
	if arrived["granted"] != 2 || arrived["queued"] != clients-2 {
		t.Errorf("arrivals: %v, want 2 granted and %d queued", arrived, clients-2)
	}
	close(hold)
	wg.Wait()
	for i := range clients {
		if codes[i] != 200 || got[i] != want[i] {
			t.Errorf("client %d: %d %q, want 200 %q", i, codes[i], got[i], want[i])
		}
	}
}

// BenchmarkServe: 8 clients send 32 greedy completions of 16 tokens to a
// server with 2 workers over loopback HTTP; it reports tokens/s, p99
// latency, and the ratio of the tokens/s to the rival, the same 32
// generations run one after another by carryon.GenerateIDs in-process.
func BenchmarkServe(b *testing.B) {
	base := tinyBase(b, 128)
	_, hs := newServer(b, Config{Base: base, Workers: 2, MaxQueue: 64})
	prompts := make([]string, 32)
	for i := range prompts {
		prompts[i] = fmt.Sprintf("Question %d: what is %d + %d?\nAnswer:", i, i, 2*i)
	}
	var served, direct float64
	var p99 float64
	for b.Loop() {
		res, err := Load(context.Background(), LoadConfig{URL: hs.URL, Prompts: prompts, Clients: 8, Requests: 32, MaxTokens: 16})
		if err != nil {
			b.Fatal(err)
		}
		served += res.TokensPerSec
		p99 = max(p99, res.P99MS)
		t0, n := time.Now(), 0
		for _, p := range prompts {
			out, _, err := carryon.GenerateIDs(base, nil, 1, promptIDs(p), carryon.GenerateOptions{MaxTokens: 16, Stop: []int32{tokenizer.ByteTokEOS}})
			if err != nil {
				b.Fatal(err)
			}
			n += len(out)
		}
		direct += float64(n) / time.Since(t0).Seconds()
	}
	b.ReportMetric(served/float64(b.N), "tokens/s")
	b.ReportMetric(p99, "p99-ms")
	b.ReportMetric(served/direct, "x-direct")
}

// TestSentencePieceContinuation: with a SentencePiece tokenizer, whose
// tokens carry their leading space (▁), a completion continues its prompt:
// prompt + completion decode as the whole sequence does, so the
// completion of "… t10" starts with the space of its first token (" t7",
// not "t7" glued to the prompt), and so do the streamed pieces and the
// logprobs' token texts.
func TestSentencePieceContinuation(t *testing.T) {
	b := tinyBase(t, 64)
	toks := []string{"<unk>", "<s>", "</s>"}
	types := []int32{tokenizer.SPMTypeUnknown, tokenizer.SPMTypeControl, tokenizer.SPMTypeControl}
	for i := len(toks); i < b.Config.Vocab; i++ {
		toks, types = append(toks, fmt.Sprintf("▁t%d", i)), append(types, tokenizer.SPMTypeNormal)
	}
	tok, err := tokenizer.NewSPMTokenizer(tokenizer.SPMConfig{Tokens: toks, Types: types, BOS: 1, EOS: 2, UNK: 0, AddSpacePrefix: true})
	if err != nil {
		t.Fatal(err)
	}
	_, hs := newServer(t, Config{Base: b, Tokenizer: tok})
	prompt := []int32{1, 10, 20, 30}
	for _, stream := range []bool{false, true} {
		code, body := post(t, hs.URL+"/v1/completions", map[string]any{"model": "base", "prompt": prompt, "max_tokens": 4,
			"temperature": 0, "logprobs": 0, "stream": stream})
		if code != 200 {
			t.Fatalf("%d %s", code, body)
		}
		var text string
		var tokens []string
		if stream {
			for _, line := range strings.Split(string(body), "\n") {
				data, ok := strings.CutPrefix(line, "data: ")
				if !ok || data == "[DONE]" {
					continue
				}
				var r CompletionResponse
				if err := json.Unmarshal([]byte(data), &r); err != nil {
					t.Fatal(err)
				}
				for _, c := range r.Choices {
					text += c.Text
					if c.Logprobs != nil {
						tokens = append(tokens, c.Logprobs.Tokens...)
					}
				}
			}
		} else {
			var r CompletionResponse
			if err := json.Unmarshal(body, &r); err != nil {
				t.Fatal(err)
			}
			text, tokens = r.Choices[0].Text, r.Choices[0].Logprobs.Tokens
		}
		if !strings.HasPrefix(text, " t") {
			t.Fatalf("stream %v: completion %q: want the first token's leading space (the greedy tokens must not be special)", stream, text)
		}
		if got := strings.Join(tokens, ""); got != text {
			t.Errorf("stream %v: token texts %q, completion %q", stream, got, text)
		}
		var gen []int32
		for _, s := range tokens {
			id, _ := tok.ID(strings.Replace(s, " ", "▁", 1))
			gen = append(gen, id)
		}
		if whole := tok.Decode(append(append([]int32(nil), prompt...), gen...)); whole != tok.Decode(prompt)+text {
			t.Errorf("stream %v: prompt + completion %q, the whole sequence %q", stream, tok.Decode(prompt)+text, whole)
		}
	}
}
