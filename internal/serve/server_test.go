package serve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/carryon"
	"carryon/internal/testenv"
	"carryon/model"
	"carryon/swarm"
	"carryon/tokenizer"
)

const tinyHash = "tiny-base-weights-hash"

// tinyBase is a random qwen2 base on the byte tokenizer's vocabulary.
func tinyBase(t testing.TB, maxPos int) *model.Base {
	t.Helper()
	cfg := model.Config{Arch: "qwen2", Dim: 32, Layers: 2, Heads: 2, KVHeads: 1, HeadDim: 16, FFN: 64,
		Vocab: tokenizer.ByteTokVocabSize, MaxPos: maxPos, RopeTheta: 1e4, NormEps: 1e-6, TiedEmbeddings: true,
		QKVBias: true, BOS: tokenizer.ByteTokBOS, EOS: tokenizer.ByteTokEOS}
	b, err := model.NewRandomBase(cfg, 7)
	if err != nil {
		t.Fatal(err)
	}
	b.WeightsHash = tinyHash
	return b
}

// randomAdaptor returns an adaptor file for b with a random W_Δ (so that it
// changes the output) and its carry-on.
func randomAdaptor(t testing.TB, b *model.Base, seed uint64, baseHash, parent string) ([]byte, *carryon.Model) {
	t.Helper()
	cfg := carryon.DefaultConfig(b.Config.Dim, b.Config.Vocab)
	cfg.Width, cfg.Layers, cfg.Heads, cfg.FFN, cfg.MaxSeq = 16, 1, 2, 44, 256
	co, err := carryon.New(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 99))
	for i := range co.Delta {
		co.Delta[i] = float32(rng.NormFloat64())
	}
	data, err := co.Marshal(carryon.Meta{BaseHash: baseHash, Parent: parent, Step: 3})
	if err != nil {
		t.Fatal(err)
	}
	return data, co
}

func cidOf(data []byte) string { return swarm.CIDOf(data).String() }

func openStore(t *testing.T) *swarm.Blocks {
	t.Helper()
	b, err := swarm.OpenBlocks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// serveAdaptor starts a server on a tiny base with a random adaptor (drawn
// from seed) added under name, and returns the base, the adaptor file, the
// carry-on and the HTTP server.
func serveAdaptor(t testing.TB, seed uint64, name string) (*model.Base, []byte, *carryon.Model, *httptest.Server) {
	t.Helper()
	b := tinyBase(t, 128)
	data, co := randomAdaptor(t, b, seed, tinyHash, "")
	s, hs := newServer(t, Config{Base: b})
	if _, err := s.Add(context.Background(), name, data); err != nil {
		t.Fatal(err)
	}
	return b, data, co, hs
}

func newServer(t testing.TB, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	if cfg.Tokenizer == nil {
		cfg.Tokenizer = tokenizer.ByteTokenizer{}
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	t.Cleanup(s.Close)
	return s, hs
}

// expect is what the model package's own Generate gives for a prompt: the
// oracle the server's answers are checked against.
func expect(t testing.TB, b *model.Base, stages []*carryon.Model, alpha float32, ids []int32, maxTokens int) ([]int32, bool) {
	t.Helper()
	out, stopped, err := carryon.GenerateIDs(b, stages, alpha, ids, carryon.GenerateOptions{MaxTokens: maxTokens, Stop: []int32{tokenizer.ByteTokEOS}})
	if err != nil {
		t.Fatal(err)
	}
	return out, stopped
}

func promptIDs(text string) []int32 {
	return append([]int32{tokenizer.ByteTokBOS}, tokenizer.ByteTokenizer{}.Encode(text)...)
}

// post sends body as JSON and returns the status and body.
func post(t testing.TB, url string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch v := body.(type) {
	case string:
		rd = strings.NewReader(v)
	case []byte:
		rd = bytes.NewReader(v)
	default:
		js, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequest("POST", url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, data := testenv.Fetch(t, req)
	return resp.StatusCode, data
}

func completion(t testing.TB, url string, req map[string]any) CompletionResponse {
	t.Helper()
	code, body := post(t, url+"/v1/completions", req)
	if code != http.StatusOK {
		t.Fatalf("completion %v: status %d: %s", req, code, body)
	}
	var r CompletionResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("completion response %s: %v", body, err)
	}
	if len(r.Choices) != 1 || r.Choices[0].FinishReason == nil {
		t.Fatalf("completion response %s: want one finished choice", body)
	}
	return r
}

// readStream reads an event stream: the data payloads before [DONE], and
// whether [DONE] came.
func readStream(t testing.TB, r io.Reader) (events []string, done bool) {
	t.Helper()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("stream line %q is not a data event", line)
		}
		if data == "[DONE]" {
			if sc.Scan() && strings.TrimSpace(sc.Text()) != "" {
				t.Fatalf("data after [DONE]: %q", sc.Text())
			}
			return events, true
		}
		events = append(events, data)
	}
	return events, false
}

// postStream posts req with stream set to url, checks that an event stream
// answers, and reads it (readStream).
func postStream(t testing.TB, url string, req map[string]any) (events []string, done bool) {
	t.Helper()
	req["stream"] = true
	js, _ := json.Marshal(req)
	resp, err := http.Post(url, "application/json", bytes.NewReader(js))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("stream: status %d, type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return readStream(t, resp.Body)
}

func streamCompletion(t testing.TB, url string, req map[string]any) (text, finish string, usage *Usage) {
	t.Helper()
	events, done := postStream(t, url+"/v1/completions", req)
	if !done {
		t.Fatalf("stream ended without [DONE]: %q", events)
	}
	for i, ev := range events {
		var c CompletionResponse
		if err := json.Unmarshal([]byte(ev), &c); err != nil {
			t.Fatalf("event %q: %v", ev, err)
		}
		if c.Object != "text_completion" {
			t.Fatalf("event %q: object %q", ev, c.Object)
		}
		if c.Usage != nil {
			if len(c.Choices) != 0 || i != len(events)-1 {
				t.Fatalf("usage event %q: want the last event, with no choices", ev)
			}
			usage = c.Usage
			continue
		}
		if len(c.Choices) != 1 {
			t.Fatalf("event %q: want one choice", ev)
		}
		if finish != "" {
			t.Fatalf("event %q after the finish_reason", ev)
		}
		if !utf8.ValidString(c.Choices[0].Text) {
			t.Fatalf("event %q carries invalid UTF-8", ev)
		}
		text += c.Choices[0].Text
		if f := c.Choices[0].FinishReason; f != nil {
			finish = *f
		}
	}
	if finish == "" {
		t.Fatalf("stream without a finish_reason: %q", events)
	}
	return text, finish, usage
}

func TestCompletionsMatchGenerate(t *testing.T) {
	b, data, co, hs := serveAdaptor(t, 1, "tuned")
	const prompt, maxTok = "Question: 2+3?\nAnswer: ", 24
	ids := promptIDs(prompt)
	texts := map[string]string{}
	for _, tc := range []struct {
		model  string
		stages []*carryon.Model
	}{
		{"base", nil},
		{"tuned", []*carryon.Model{co}},
		{cidOf(data), []*carryon.Model{co}},
	} {
		want, stopped := expect(t, b, tc.stages, 1, ids, maxTok)
		wantText, wantFinish := tokenizer.ByteTokenizer{}.Decode(want), "length"
		if stopped {
			wantFinish = "stop"
		}
		req := map[string]any{"model": tc.model, "prompt": prompt, "max_tokens": maxTok, "temperature": 0}
		r := completion(t, hs.URL, req)
		if got := r.Choices[0].Text; got != wantText {
			t.Errorf("%s: text %q, carryon.GenerateIDs gives %q", tc.model, got, wantText)
		}
		if *r.Choices[0].FinishReason != wantFinish {
			t.Errorf("%s: finish_reason %q, want %q", tc.model, *r.Choices[0].FinishReason, wantFinish)
		}
		if u := r.Usage; u == nil || u.PromptTokens != len(ids) || u.CompletionTokens != len(want) || u.TotalTokens != len(ids)+len(want) {
			t.Errorf("%s: usage %+v, want %d + %d tokens", tc.model, r.Usage, len(ids), len(want))
		}
		if r.Model != tc.model || r.Object != "text_completion" || !strings.HasPrefix(r.ID, "cmpl-") {
			t.Errorf("%s: response header fields %q %q %q", tc.model, r.Model, r.Object, r.ID)
		}
		wantStages := 0
		if tc.stages != nil {
			wantStages = 1
		}
		if r.CarryOn == nil || r.CarryOn.BaseHash != tinyHash || len(r.CarryOn.Stages) != wantStages {
			t.Errorf("%s: carryon info %+v", tc.model, r.CarryOn)
		}
		sreq := map[string]any{"model": tc.model, "prompt": prompt, "max_tokens": maxTok, "temperature": 0,
			"stream_options": map[string]any{"include_usage": true}}
		text, finish, usage := streamCompletion(t, hs.URL, sreq)
		if text != wantText || finish != wantFinish {
			t.Errorf("%s: streamed %q (%s), want %q (%s)", tc.model, text, finish, wantText, wantFinish)
		}
		if usage == nil || *usage != *r.Usage {
			t.Errorf("%s: streamed usage %+v, want %+v", tc.model, usage, r.Usage)
		}
		texts[tc.model] = wantText
	}
	if texts["base"] == texts["tuned"] {
		t.Errorf("the adaptor did not change the output: %q", texts["base"])
	}
}

func TestAlpha(t *testing.T) {
	b, data, co, hs := serveAdaptor(t, 2, "")
	id := cidOf(data)
	const prompt = "The capital of"
	get := func(m string, alpha any) string {
		req := map[string]any{"model": m, "prompt": prompt, "max_tokens": 20, "temperature": 0}
		if alpha != nil {
			req["carryon_alpha"] = alpha
		}
		return completion(t, hs.URL, req).Choices[0].Text
	}
	base := get("base", nil)
	if got := get(id, 0); got != base {
		t.Errorf("alpha 0: %q, the base gives %q", got, base)
	}
	half, _ := expect(t, b, []*carryon.Model{co}, 0.5, promptIDs(prompt), 20)
	if got, want := get(id, 0.5), (tokenizer.ByteTokenizer{}).Decode(half); got != want {
		t.Errorf("alpha 0.5: %q, carryon.GenerateIDs gives %q", got, want)
	}
	if get(id, nil) == base {
		t.Errorf("alpha 1 (the adaptor's default) gives the base's text %q", base)
	}
	// A server-wide alpha of 0 makes every adaptor the base, unless the
	// request overrides it.
	zero := float32(0)
	s0, hs0 := newServer(t, Config{Base: b, Alpha: &zero})
	if _, err := s0.Add(context.Background(), "", data); err != nil {
		t.Fatal(err)
	}
	r := completion(t, hs0.URL, map[string]any{"model": id, "prompt": prompt, "max_tokens": 20, "temperature": 0})
	if r.Choices[0].Text != base {
		t.Errorf("server alpha 0: %q, the base gives %q", r.Choices[0].Text, base)
	}
}

func TestBoostingChain(t *testing.T) {
	b := tinyBase(t, 128)
	first, co1 := randomAdaptor(t, b, 3, tinyHash, "")
	second, co2 := randomAdaptor(t, b, 4, tinyHash, cidOf(first))
	// Without its parent, a boosting stage does not load.
	s0, _ := newServer(t, Config{Base: b})
	if _, err := s0.Add(context.Background(), "", second); !errors.Is(err, ErrUnknownModel) || !strings.Contains(err.Error(), cidOf(first)) {
		t.Errorf("stage without its parent: %v, want ErrUnknownModel naming the parent", err)
	}
	s, hs := newServer(t, Config{Base: b})
	for name, d := range map[string][]byte{"one": first, "two": second} {
		if name == "two" {
			continue
		}
		if _, err := s.Add(context.Background(), name, d); err != nil {
			t.Fatal(err)
		}
	}
	card, err := s.Add(context.Background(), "two", second)
	if err != nil {
		t.Fatal(err)
	}
	if len(card.Stages) != 2 || card.Stages[0] != cidOf(first) || card.Stages[1] != cidOf(second) || card.Parent != cidOf(first) {
		t.Errorf("card %+v: want stages [first second]", card)
	}
	const prompt = "Once upon"
	want, _ := expect(t, b, []*carryon.Model{co1, co2}, 1, promptIDs(prompt), 20)
	r := completion(t, hs.URL, map[string]any{"model": "two", "prompt": prompt, "max_tokens": 20, "temperature": 0})
	if got := r.Choices[0].Text; got != (tokenizer.ByteTokenizer{}).Decode(want) {
		t.Errorf("chain: %q, carryon.GenerateIDs over both stages gives %q", got, (tokenizer.ByteTokenizer{}).Decode(want))
	}
	alone, _ := expect(t, b, []*carryon.Model{co2}, 1, promptIDs(prompt), 20)
	if bytes.Equal([]byte((tokenizer.ByteTokenizer{}).Decode(alone)), []byte(r.Choices[0].Text)) {
		t.Errorf("the chain's output equals the second stage alone: the parent was not applied")
	}
	if len(r.CarryOn.Stages) != 2 {
		t.Errorf("response stages %v, want 2", r.CarryOn.Stages)
	}

	// /v1/models lists base, then the adaptors in the order added.
	resp, err := http.Get(hs.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list ModelList
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range list.Data {
		ids = append(ids, m.ID)
		if m.BaseHash != tinyHash || m.Object != "model" {
			t.Errorf("model card %+v", m)
		}
	}
	if list.Object != "list" || strings.Join(ids, ",") != "base,one,two" {
		t.Errorf("models %v, want base,one,two", ids)
	}
	one, err := http.Get(hs.URL + "/v1/models/" + cidOf(second))
	if err != nil {
		t.Fatal(err)
	}
	one.Body.Close()
	if one.StatusCode != http.StatusOK {
		t.Errorf("GET /v1/models/CID: %d", one.StatusCode)
	}
}

// apiError checks an error answer and returns its error object.
func apiError(t testing.TB, code int, body []byte, wantStatus int) APIError {
	t.Helper()
	var e ErrorResponse
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
		t.Errorf("status %d: body %q is not an OpenAI error object (%v)", code, body, err)
	}
	if code != wantStatus {
		t.Errorf("status %d, want %d: %s", code, wantStatus, body)
	}
	return e.Error
}

func TestAdaptorForAnotherBase(t *testing.T) {
	b := tinyBase(t, 128)
	const other = "0123456789abcdef-another-base"
	data, _ := randomAdaptor(t, b, 5, other, "")
	store := openStore(t)
	if _, err := store.AddBytes(context.Background(), data); err != nil {
		t.Fatal(err)
	}
	s, hs := newServer(t, Config{Base: b, Fetch: FromStore(store, nil, 0)})
	var bm *BaseMismatchError
	if _, err := s.Add(context.Background(), "x", data); !errors.As(err, &bm) || bm.Adaptor != other || bm.Base != tinyHash {
		t.Errorf("Add: %v, want a BaseMismatchError", err)
	}
	for path, req := range map[string]map[string]any{
		"/v1/completions":      {"model": cidOf(data), "prompt": "hi"},
		"/v1/chat/completions": {"model": cidOf(data), "messages": []map[string]any{{"role": "user", "content": "hi"}}},
	} {
		code, body := post(t, hs.URL+path, req)
		e := apiError(t, code, body, http.StatusBadRequest)
		if e.Code == nil || *e.Code != "adaptor_base_mismatch" || !strings.Contains(e.Message, other) || !strings.Contains(e.Message, tinyHash) {
			t.Errorf("%s: error %+v, want adaptor_base_mismatch naming both hashes", path, e)
		}
	}
	// An adaptor with no base hash cannot be checked, so it is refused.
	nohash, _ := randomAdaptor(t, b, 6, "", "")
	if _, err := s.Add(context.Background(), "", nohash); !errors.As(err, &bm) {
		t.Errorf("Add of an adaptor without a base hash: %v", err)
	}
	// The server still serves.
	completion(t, hs.URL, map[string]any{"model": "base", "prompt": "hi", "max_tokens": 3})
	if n := len(s.Models()); n != 1 {
		t.Errorf("%d models after refused adaptors, want only base", n)
	}
}

func TestBadRequests(t *testing.T) {
	b := tinyBase(t, 64)
	_, hs := newServer(t, Config{Base: b})
	msgs := []map[string]any{{"role": "user", "content": "hi"}}
	for _, tc := range []struct {
		name, path string
		body       any
		status     int
		code       string
	}{
		{"malformed", "/v1/completions", `{"model": "base", "prompt": `, 400, "invalid_json"},
		{"trailing data", "/v1/completions", `{"model": "base", "prompt": "a"} {}`, 400, "invalid_json"},
		{"not an object", "/v1/chat/completions", `[1, 2]`, 400, "invalid_json"},
		{"wrong type", "/v1/completions", `{"model": "base", "prompt": "a", "max_tokens": "5"}`, 400, "invalid_json"},
		{"no model", "/v1/completions", map[string]any{"prompt": "a"}, 400, "missing_model"},
		{"unknown model", "/v1/completions", map[string]any{"model": "gpt-4", "prompt": "a"}, 400, "model_not_found"},
		{"unknown CID", "/v1/chat/completions", map[string]any{"model": cidOf([]byte("nothing")), "messages": msgs}, 400, "model_not_found"},
		{"negative max_tokens", "/v1/completions", map[string]any{"model": "base", "prompt": "a", "max_tokens": -1}, 400, "invalid_value"},
		{"zero max_tokens", "/v1/chat/completions", map[string]any{"model": "base", "messages": msgs, "max_completion_tokens": 0}, 400, "invalid_value"},
		{"hot temperature", "/v1/completions", map[string]any{"model": "base", "prompt": "a", "temperature": 3}, 400, "invalid_value"},
		{"top_p", "/v1/completions", map[string]any{"model": "base", "prompt": "a", "top_p": 1.5}, 400, "invalid_value"},
		{"n", "/v1/completions", map[string]any{"model": "base", "prompt": "a", "n": 2}, 400, "invalid_value"},
		{"stops", "/v1/completions", map[string]any{"model": "base", "prompt": "a", "stop": []string{"a", "b", "c", "d", "e"}}, 400, "invalid_value"},
		{"empty stop", "/v1/completions", map[string]any{"model": "base", "prompt": "a", "stop": ""}, 400, "invalid_value"},
		{"stream_options alone", "/v1/completions", map[string]any{"model": "base", "prompt": "a", "stream_options": map[string]any{"include_usage": true}}, 400, "invalid_value"},
		{"two prompts", "/v1/completions", map[string]any{"model": "base", "prompt": []string{"a", "b"}}, 400, "invalid_prompt"},
		{"no prompt", "/v1/completions", map[string]any{"model": "base"}, 400, "invalid_prompt"},
		{"token out of vocabulary", "/v1/completions", map[string]any{"model": "base", "prompt": []int{1, 259}}, 400, "invalid_prompt"},
		{"prompt too long", "/v1/completions", map[string]any{"model": "base", "prompt": strings.Repeat("x", 64)}, 400, "context_length_exceeded"},
		{"chat too long", "/v1/chat/completions", map[string]any{"model": "base", "messages": []map[string]any{{"role": "user", "content": strings.Repeat("y", 60)}}}, 400, "context_length_exceeded"},
		{"no messages", "/v1/chat/completions", map[string]any{"model": "base", "messages": []any{}}, 400, "invalid_messages"},
		{"bad role", "/v1/chat/completions", map[string]any{"model": "base", "messages": []map[string]any{{"role": "root", "content": "a"}}}, 400, "invalid_messages"},
		{"image part", "/v1/chat/completions", map[string]any{"model": "base", "messages": []map[string]any{{"role": "user", "content": []map[string]any{{"type": "image_url"}}}}}, 400, "invalid_messages"},
		{"alpha", "/v1/completions", `{"model": "base", "prompt": "a", "carryon_alpha": 1e300}`, 400, "invalid_value"},
		{"oversized", "/v1/completions", `{"model": "base", "prompt": "` + strings.Repeat("z", MaxBodyBytes) + `"}`, 413, "request_too_large"},
	} {
		code, body := post(t, hs.URL+tc.path, tc.body)
		e := apiError(t, code, body, tc.status)
		if e.Code == nil || *e.Code != tc.code {
			t.Errorf("%s: error %+v, want code %q", tc.name, e, tc.code)
		}
	}
	// Wrong method, unknown path.
	resp, err := http.Get(hs.URL + "/v1/completions")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	apiError(t, resp.StatusCode, body, http.StatusMethodNotAllowed)
	code, body := post(t, hs.URL+"/v2/anything", "{}")
	apiError(t, code, body, http.StatusNotFound)
	// A prompt that fills the context still gets one token.
	r := completion(t, hs.URL, map[string]any{"model": "base", "prompt": strings.Repeat("x", 63), "max_tokens": 50, "temperature": 0})
	if r.Usage.PromptTokens != 64 || r.Usage.CompletionTokens > 1 {
		t.Errorf("full context: usage %+v, want 64 prompt tokens and at most 1 new", r.Usage)
	}
}

func TestStopSequences(t *testing.T) {
	b := tinyBase(t, 256)
	_, hs := newServer(t, Config{Base: b})
	const prompt = "abc"
	want, _ := expect(t, b, nil, 1, promptIDs(prompt), 60)
	full := (tokenizer.ByteTokenizer{}).Decode(want)
	runes := []rune(full)
	if len(runes) < 12 {
		t.Fatalf("test setup: greedy text %q too short", full)
	}
	for _, at := range []int{0, 3, 7} {
		stop := string(runes[at : at+3])
		i := strings.Index(full, stop)
		req := func() map[string]any {
			return map[string]any{"model": "base", "prompt": prompt, "max_tokens": 60, "temperature": 0,
				"stop": []string{"\x00never", stop}}
		}
		r := completion(t, hs.URL, req())
		if got := r.Choices[0].Text; got != full[:i] || *r.Choices[0].FinishReason != "stop" {
			t.Errorf("stop %q: %q (%s), want %q (stop)", stop, got, *r.Choices[0].FinishReason, full[:i])
		}
		text, finish, _ := streamCompletion(t, hs.URL, req())
		if text != full[:i] || finish != "stop" {
			t.Errorf("stop %q streamed: %q (%s), want %q (stop)", stop, text, finish, full[:i])
		}
	}
}

// FuzzRequest feeds arbitrary bodies to the request decoders and checks:
// they never panic, and a request they accept has sane options.
func FuzzRequest(f *testing.F) {
	f.Add([]byte(`{"model":"base","prompt":"hi","max_tokens":5,"stop":["a"],"temperature":0.5}`))
	f.Add([]byte(`{"model":"x","messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],"n":1}`))
	f.Add([]byte(`{"prompt":[1,2,3],"stop":"\n","seed":-4,"carryon_alpha":0}`))
	f.Add([]byte(`{"model":"base","messages":[{"role":"user","content":"a","name":"x"}],"tools":[],"logprobs":true,"top_logprobs":2}`))
	f.Add([]byte(`{"model":"base","prompt":"a","echo":true,"logprobs":3,"top_p":0.5,"presence_penalty":1,"stream_options":{"x":1}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, chat := range []bool{false, true} {
			if e := checkRequestKeys(body, chat); e != nil && (e.param == "" || e.status != http.StatusBadRequest) {
				t.Fatalf("refusal %+v names no parameter", e)
			}
		}
		var c CompletionRequest
		if decodeJSON(body, &c) == nil {
			if o, e := c.options(); e == nil && (o.topP <= 0 || o.topP > 1 || o.topLogprobs < 0 || o.topLogprobs > maxLogprobs) {
				t.Fatalf("accepted options %+v", o)
			}
			if o, e := c.Sampling.validate(); e == nil {
				if o.maxTokens < 0 || len(o.stop) > maxStops || o.temperature < 0 || o.temperature > maxTemperature {
					t.Fatalf("accepted options %+v", o)
				}
			}
			parsePrompt(c.Prompt)
		}
		var ch ChatRequest
		if decodeJSON(body, &ch) == nil {
			if msgs, e := checkMessages(ch.Messages); e == nil {
				for _, m := range msgs {
					if !chatRoles[m.role] {
						t.Fatalf("accepted role %q", m.role)
					}
				}
			}
		}
	})
}

func TestChatStreamMatchesNonStream(t *testing.T) {
	b := tinyBase(t, 256)
	data, co := randomAdaptor(t, b, 8, tinyHash, "")
	s, hs := newServer(t, Config{Base: b})
	if _, err := s.Add(context.Background(), "a", data); err != nil {
		t.Fatal(err)
	}
	msgs := []map[string]any{{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}}
	for _, m := range []string{"base", "a"} {
		req := map[string]any{"model": m, "messages": msgs, "max_tokens": 30, "temperature": 0}
		code, body := post(t, hs.URL+"/v1/chat/completions", req)
		if code != http.StatusOK {
			t.Fatalf("%s: %d %s", m, code, body)
		}
		var r ChatResponse
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatal(err)
		}
		if r.Object != "chat.completion" || len(r.Choices) != 1 || r.Choices[0].Message == nil || r.Choices[0].Message.Role != "assistant" {
			t.Fatalf("%s: response %s", m, body)
		}
		// The oracle: the plain template rendered by hand, then Generate.
		prompt := "<|system|>\nBe brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n"
		var stages []*carryon.Model
		if m == "a" {
			stages = []*carryon.Model{co}
		}
		ids, _ := expect(t, b, stages, 1, promptIDs(prompt), 30)
		want := (tokenizer.ByteTokenizer{}).Decode(ids)
		if i := strings.Index(want, "\n<|"); i >= 0 {
			want = want[:i]
		}
		if got := r.Choices[0].Message.Content; got != want {
			t.Errorf("%s: content %q, want %q", m, got, want)
		}
		if r.Usage.PromptTokens != len(promptIDs(prompt)) {
			t.Errorf("%s: %d prompt tokens, the template has %d", m, r.Usage.PromptTokens, len(promptIDs(prompt)))
		}

		events, done := postStream(t, hs.URL+"/v1/chat/completions", req)
		if !done || len(events) < 2 {
			t.Fatalf("%s: stream %q", m, events)
		}
		var content, finish string
		for i, ev := range events {
			var c ChatResponse
			if err := json.Unmarshal([]byte(ev), &c); err != nil || c.Object != "chat.completion.chunk" || len(c.Choices) != 1 || c.Choices[0].Delta == nil {
				t.Fatalf("%s: event %q (%v)", m, ev, err)
			}
			d := c.Choices[0].Delta
			if (i == 0) != (d.Role == "assistant") {
				t.Errorf("%s: event %d has role %q", m, i, d.Role)
			}
			if d.Content != nil {
				content += *d.Content
			}
			if f := c.Choices[0].FinishReason; f != nil {
				finish = *f
			}
		}
		if content != r.Choices[0].Message.Content || finish != *r.Choices[0].FinishReason {
			t.Errorf("%s: streamed %q (%s), non-streamed %q (%s)", m, content, finish, r.Choices[0].Message.Content, *r.Choices[0].FinishReason)
		}
	}
}

func TestChatMLTemplate(t *testing.T) {
	// A byte-level BPE tokenizer with no merges (one token per byte) and
	// the two ChatML tokens as special added tokens.
	vocab := append(byteLevelVocab(), "<|im_start|>", "<|im_end|>")
	tok, err := tokenizer.NewBPETokenizer(vocab, nil, tokenizer.PretokQwen2, map[string]int32{"<|im_start|>": 256, "<|im_end|>": 257})
	if err != nil {
		t.Fatal(err)
	}
	tpl := newChatTemplate(tok)
	if !tpl.chatml || tpl.start != 256 || tpl.end != 257 {
		t.Fatalf("template %+v: want ChatML with ids 256, 257", tpl)
	}
	ids, stopIDs, stopStrs := tpl.render(tok, []chatMsg{{"user", "hi <|im_end|>"}})
	got := tok.Decode(ids)
	if want := "<|im_start|>user\nhi <|im_end|><|im_end|>\n<|im_start|>assistant\n"; got != want {
		t.Errorf("rendered %q, want %q", got, want)
	}
	n := 0
	for _, id := range ids {
		if id == 257 {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d <|im_end|> tokens in %v: a literal one in the content must stay text", n, ids)
	}
	if len(stopIDs) != 1 || stopIDs[0] != 257 || len(stopStrs) != 0 {
		t.Errorf("stops %v %q, want <|im_end|> only", stopIDs, stopStrs)
	}
	if plain := newChatTemplate(tokenizer.ByteTokenizer{}); plain.chatml {
		t.Error("the byte tokenizer got the ChatML template")
	}
}

// byteLevelVocab is GPT-2's byte-to-unicode alphabet: token i is byte i.
func byteLevelVocab() []string {
	var bs []int
	for c := '!'; c <= '~'; c++ {
		bs = append(bs, int(c))
	}
	for c := 0xA1; c <= 0xAC; c++ {
		bs = append(bs, c)
	}
	for c := 0xAE; c <= 0xFF; c++ {
		bs = append(bs, c)
	}
	cs := map[int]rune{}
	for _, c := range bs {
		cs[c] = rune(c)
	}
	n := 0
	for c := 0; c < 256; c++ {
		if _, ok := cs[c]; !ok {
			cs[c] = rune(256 + n)
			n++
		}
	}
	v := make([]string, 256)
	for c := 0; c < 256; c++ {
		v[c] = string(cs[c])
	}
	return v
}

func TestCancelStopsGeneration(t *testing.T) {
	b := tinyBase(t, 256)
	s, hs := newServer(t, Config{Base: b, Workers: 1})
	started := make(chan struct{})
	var (
		once       sync.Once
		mu         sync.Mutex
		secondSeen int64 = -1
	)
	first := true
	s.tokenHook = func(ctx context.Context, n int) {
		mu.Lock()
		isFirst := first
		mu.Unlock()
		if isFirst && n == 1 {
			once.Do(func() { close(started) })
			<-ctx.Done() // hold the first token until the client has gone
			mu.Lock()
			first = false
			mu.Unlock()
			return
		}
		mu.Lock()
		if !isFirst && n == 1 {
			secondSeen = s.Generated()
		}
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	js, _ := json.Marshal(map[string]any{"model": "base", "prompt": "go on", "max_tokens": 200, "temperature": 0, "stream": true})
	req, _ := http.NewRequestWithContext(ctx, "POST", hs.URL+"/v1/completions", bytes.NewReader(js))
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(time.Minute):
		t.Fatal("the first request never sampled a token")
	}
	cancel()
	if err := <-errc; err == nil {
		t.Error("the cancelled request finished without an error")
	}
	// With one worker, this request runs only once the first has let go.
	r := completion(t, hs.URL, map[string]any{"model": "base", "prompt": "go on", "max_tokens": 5, "temperature": 0})
	mu.Lock()
	defer mu.Unlock()
	if secondSeen != 2 {
		t.Errorf("%d tokens sampled when the second request sampled its first, want 2: the cancelled generation went on", secondSeen)
	}
	if r.Choices[0].FinishReason == nil {
		t.Error("second request unfinished")
	}
}

func TestQueueFull(t *testing.T) {
	b := tinyBase(t, 64)
	events := make(chan string, 16)
	s, hs := newServer(t, Config{Base: b, Workers: 1, MaxQueue: 1, schedHook: func(ev, _ string) { events <- ev }})
	release := make(chan struct{})
	started := make(chan struct{})
	var once sync.Once
	s.tokenHook = func(ctx context.Context, n int) {
		once.Do(func() { close(started); <-release })
	}
	body := map[string]any{"model": "base", "prompt": "x", "max_tokens": 2, "temperature": 0}
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range codes {
		if i == 1 {
			<-started
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _ = post(t, hs.URL+"/v1/completions", body)
		}()
	}
	for ev := range events { // the second request waits for the worker
		if ev == "queued" {
			break
		}
	}
	code, resp := post(t, hs.URL+"/v1/completions", body)
	if e := apiError(t, code, resp, http.StatusServiceUnavailable); e.Code == nil || *e.Code != "server_busy" {
		t.Errorf("third request: %+v", e)
	}
	close(release)
	wg.Wait()
	if codes[0] != 200 || codes[1] != 200 {
		t.Errorf("queued requests: %v, want 200 200", codes)
	}
}

// TestPullFromSwarm serves a chat request with an adaptor the server does
// not have: it is fetched by CID from another libp2p host, hash-checked,
// kept in the local store and applied.
func TestPullFromSwarm(t *testing.T) {
	b := tinyBase(t, 256)
	data, co := randomAdaptor(t, b, 9, tinyHash, "")
	id := cidOf(data)

	provider, err := swarm.NewHost(swarm.HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer provider.Close()
	pstore := openStore(t)
	if _, err := pstore.AddBytes(context.Background(), data); err != nil {
		t.Fatal(err)
	}
	px, err := swarm.NewExchange(provider, pstore, swarm.ExchangeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()

	h, err := swarm.NewHost(swarm.HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Connect(context.Background(), peer.AddrInfo{ID: provider.ID(), Addrs: provider.Addrs()}); err != nil {
		t.Fatal(err)
	}
	local := openStore(t)
	x, err := swarm.NewExchange(h, local, swarm.ExchangeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	s, hs := newServer(t, Config{Base: b, Fetch: FromStore(local, x, 0)})

	req := map[string]any{"model": id, "messages": []map[string]any{{"role": "user", "content": "Hello"}},
		"max_tokens": 25, "temperature": 0}
	code, body := post(t, hs.URL+"/v1/chat/completions", req)
	if code != http.StatusOK {
		t.Fatalf("chat with a remote adaptor: %d %s", code, body)
	}
	var r ChatResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	prompt := "<|user|>\nHello\n<|assistant|>\n"
	ids, _ := expect(t, b, []*carryon.Model{co}, 1, promptIDs(prompt), 25)
	want := (tokenizer.ByteTokenizer{}).Decode(ids)
	if i := strings.Index(want, "\n<|"); i >= 0 {
		want = want[:i]
	}
	if got := r.Choices[0].Message.Content; got != want {
		t.Errorf("content %q, want %q", got, want)
	}
	if len(r.CarryOn.Stages) != 1 || r.CarryOn.Stages[0] != id {
		t.Errorf("stages %v, want [%s]", r.CarryOn.Stages, id)
	}
	if pins, _ := local.Pins(); pins[swarm.CIDOf(data)] == "" {
		t.Error("the fetched adaptor was not kept in the local store")
	}
	ms := s.Models()
	if len(ms) != 2 || ms[1].ID != id || !ms[1].OnDemand {
		t.Errorf("models %+v, want base and the on-demand adaptor", ms)
	}
	// A CID that no peer has is a clear 400, not a hang or a crash.
	missing, _ := randomAdaptor(t, b, 10, tinyHash, "")
	req["model"] = cidOf(missing)
	code, body = post(t, hs.URL+"/v1/chat/completions", req)
	if e := apiError(t, code, body, http.StatusBadRequest); e.Code == nil || *e.Code != "model_not_found" {
		t.Errorf("missing CID: %+v", e)
	}
}

func TestOnDemandEviction(t *testing.T) {
	b := tinyBase(t, 64)
	store := openStore(t)
	var ids []string
	for seed := uint64(20); seed < 23; seed++ {
		d, _ := randomAdaptor(t, b, seed, tinyHash, "")
		store.AddBytes(context.Background(), d)
		ids = append(ids, cidOf(d))
	}
	pinned, _ := randomAdaptor(t, b, 30, tinyHash, "")
	s, hs := newServer(t, Config{Base: b, Fetch: FromStore(store, nil, 0), MaxOnDemand: 2})
	if _, err := s.Add(context.Background(), "pinned", pinned); err != nil {
		t.Fatal(err)
	}
	// Loading ids[2] evicts ids[0]; using ids[1] again makes ids[2] the
	// least recently used, so loading ids[0] again evicts ids[2].
	for _, id := range []string{ids[0], ids[1], ids[2], ids[1], ids[0]} {
		completion(t, hs.URL, map[string]any{"model": id, "prompt": "a", "max_tokens": 1})
	}
	var got []string
	for _, m := range s.Models() {
		got = append(got, m.ID)
	}
	if want := []string{"base", "pinned", ids[1], ids[0]}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("models %v, want %v (the least recently used %s evicted, the pinned one kept)", got, want, ids[2])
	}
}
