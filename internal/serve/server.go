// Package serve is an HTTP server with OpenAI-style endpoints over one base
// model and the carry-on adaptors made for it:
//
//	POST /v1/completions       {"model", "prompt", ...}   → text
//	POST /v1/chat/completions  {"model", "messages", ...} → an assistant message
//	GET  /v1/models            "base" and every loaded adaptor
//	GET  /v1/models/{id}       one of them
//	GET  /health               {"status": "ok", ...}
//	GET  /metrics              Prometheus: requests, tokens, tokens/s, queue depth, latency
//
// docs/serve.md documents the API for its users.
//
// Models. A request's "model" is "base" (no adaptor), or a loaded adaptor's
// short name or CID. An adaptor that is a boosting stage runs with its
// chain: its parent's stages first, root first (docs/method.md). With
// Config.Fetch set, a request may name any adaptor CID: it is fetched,
// hash-checked and loaded on demand (its parents too), and the least
// recently used on-demand adaptors beyond Config.MaxOnDemand are dropped.
// Every adaptor's metadata must name this base's weights hash; a request
// for one trained on another base is answered 400 naming both hashes.
//
// α. Each request may set "carryon_alpha"; otherwise Config.Alpha applies,
// or, when that is nil, the adaptor's own default (its config's Alpha).
// One α scales every stage of a chain.
//
// Parameters. A request field this server does not implement is refused
// with a 400 naming it (unsupported_parameter for the fields of OpenAI's
// API and of llama.cpp's server it knows, unknown_parameter for others),
// never ignored; a known field with a neutral value (tools: [], n: 1) is
// accepted. temperature (default 1, as OpenAI; 0 is greedy), top_k (an
// extension), top_p, presence_penalty, frequency_penalty, seed (default:
// random), stop (up to 4 strings), logprobs (and chat's top_logprobs) and
// echo (completions) are honoured, through model.Sampler, model.Logprobs
// and model.TextStream, which `carryon generate` shares; n must be 1. Generation also ends on the
// tokenizer's and the base's EOS and on the end of the context:
// Config.MaxContext (default the base's MaxPos) counts prompt and new
// tokens, and a prompt longer than it is a 400.
//
// Chat template. When the tokenizer has <|im_start|> and <|im_end|> tokens
// (Qwen and other ChatML models) messages are rendered as ChatML:
//
//	<|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n
//
// with the content encoded as plain text (a literal "<|im_end|>" in a
// message is not a control token), and <|im_end|> ends generation. Any
// other tokenizer gets the plain template
//
//	<|{role}|>\n{content}\n ... <|assistant|>\n
//
// after the tokenizer's BOS, and generation also stops at "\n<|" (the model
// opening a new turn). No system message is added. Roles are system,
// developer, user, assistant and tool.
//
// Streaming. "stream": true answers with server-sent events: "data: {chunk}"
// per piece of text, a last chunk with the finish_reason, a usage chunk when
// stream_options.include_usage is set, then "data: [DONE]". Text that may
// be the start of a stop sequence, or an incomplete UTF-8 character, is held
// back until it is decided, so the concatenated chunks equal the
// non-streamed text for the same request and seed.
//
// Concurrency. Each request runs one generation on its own goroutine, at
// most Config.Workers at a time (default 1); up to Config.MaxQueue more
// wait, and further requests get 503. Waiting requests are served
// round-robin per client (the request's "user" field, else the client's
// address), each client's in arrival order (scheduler.go). When the client
// goes away (its request context ends), its request leaves the queue, or
// its generation stops at the next token and frees the worker.
//
// Limits. Bodies over MaxBodyBytes get 413; malformed JSON, unknown or
// unloadable models, out-of-range fields and prompts longer than the
// context get 400. Every error body is OpenAI's {"error": {"message",
// "type", "param", "code"}}.
package serve

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"carryon/carryon"
	"carryon/model"
	"carryon/tokenizer"
)

// BaseModel is the model id of the base without adaptors.
const BaseModel = "base"

// MaxBodyBytes caps a request body.
const MaxBodyBytes = 1 << 20

// maxCarryOnContext is the carry-on session's limit on positions.
const maxCarryOnContext = 1 << 20

// Config configures New.
type Config struct {
	// Base is the model served; its WeightsHash must be set (adaptors are
	// checked against it). Required.
	Base *model.Base
	// Tokenizer is the base's tokenizer. Required.
	Tokenizer tokenizer.Tokenizer
	// Alpha is the α of requests without carryon_alpha; nil means each
	// adaptor's own default (its config's Alpha).
	Alpha *float32
	// MaxTokens is the max_tokens of requests without one; 0 means 256.
	MaxTokens int
	// MaxContext caps prompt plus new tokens (and so the key/value cache a
	// request allocates); 0 means the base's MaxPos (the shortest of
	// Base's and Mix's).
	MaxContext int
	// Workers is how many generations run at once; 0 means 1.
	Workers int
	// MaxQueue is how many requests may wait for a worker; more get 503.
	// 0 means DefaultMaxQueue.
	MaxQueue int
	// Fetch, when set, loads adaptors named by CID in requests on demand.
	Fetch FetchFunc
	// MaxOnDemand is how many on-demand adaptors are kept; 0 means 8.
	MaxOnDemand int
	// Bridge, when not "", round-trips the base's hidden states through
	// this bridge codec before the carry-on, as in training.
	Bridge string
	// Mix are further bases, read by adaptors that are mixtures of bases
	// (sources "base:<hash>:final"): each must read Base's token ids (one
	// tokenizer; the caller checks the tokenizers, New the vocabulary
	// sizes). A request runs the ones its adaptor reads, each with its
	// own key/value cache; adaptors that read a base not given here are
	// refused (ErrInvalidAdaptor).
	Mix []*model.Base

	// schedHook, when set (tests), sees each scheduler event.
	schedHook func(event, client string)
}

// DefaultMaxQueue is how many requests may wait for a worker unless
// Config.MaxQueue says otherwise: room for a few hundred clients at once
// (a waiting request holds its parsed body, at most 1 MiB).
const DefaultMaxQueue = 256

// Server is the HTTP server; it implements http.Handler.
type Server struct {
	cfg     Config
	base    *model.Base
	tok     tokenizer.Tokenizer
	chat    chatTemplate
	mux     *http.ServeMux
	started time.Time

	sched   *scheduler
	metrics *metrics
	loadMu  chan struct{} // one adaptor load at a time (ctx-aware lock)

	mu     sync.Mutex
	models map[string]*adaptor // by CID and by name
	clock  int64               // use counter for LRU

	generated atomic.Int64 // tokens sampled, all requests
	// tokenHook, when set (tests), runs before each sampled token is
	// handled, with the request's context and the token's number (1-based).
	tokenHook func(ctx context.Context, n int)
}

// New makes a server with no adaptors; Add loads them.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Base == nil || cfg.Tokenizer == nil:
		return nil, errors.New("serve.New: Base and Tokenizer are required")
	case cfg.Base.WeightsHash == "":
		return nil, errors.New("serve.New: the base has no weights hash to check adaptors against")
	case cfg.Tokenizer.VocabSize() > cfg.Base.Config.Vocab:
		return nil, fmt.Errorf("serve.New: the tokenizer has %d tokens, the base's vocabulary %d", cfg.Tokenizer.VocabSize(), cfg.Base.Config.Vocab)
	case cfg.Alpha != nil && (math.IsNaN(float64(*cfg.Alpha)) || math.IsInf(float64(*cfg.Alpha), 0)):
		return nil, fmt.Errorf("serve.New: Alpha %v, want a finite value", *cfg.Alpha)
	case cfg.MaxTokens < 0 || cfg.MaxContext < 0 || cfg.Workers < 0 || cfg.MaxQueue < 0 || cfg.MaxOnDemand < 0:
		return nil, errors.New("serve.New: negative limit")
	}
	if err := carryon.CheckStages(cfg.Base, cfg.Mix, nil); err != nil {
		return nil, fmt.Errorf("serve.New: Mix: %w", err)
	}
	cfg.MaxTokens = cmp.Or(cfg.MaxTokens, 256)
	maxPos := cfg.Base.Config.MaxPos
	for _, m := range cfg.Mix {
		maxPos = min(maxPos, m.Config.MaxPos) // a mixture runs every base over the whole context
	}
	if cfg.MaxContext == 0 || cfg.MaxContext > maxPos {
		cfg.MaxContext = maxPos
	}
	cfg.MaxContext = min(cfg.MaxContext, maxCarryOnContext)
	cfg.Workers = cmp.Or(cfg.Workers, 1)
	cfg.MaxQueue = cmp.Or(cfg.MaxQueue, DefaultMaxQueue)
	cfg.MaxOnDemand = cmp.Or(cfg.MaxOnDemand, 8)
	s := &Server{cfg: cfg, base: cfg.Base, tok: cfg.Tokenizer, chat: newChatTemplate(cfg.Tokenizer),
		started: time.Now(), loadMu: make(chan struct{}, 1), models: make(map[string]*adaptor)}
	s.sched = newScheduler(cfg.Workers, cfg.MaxQueue, cfg.schedHook)
	s.metrics = newMetrics(s)
	s.mux = http.NewServeMux()
	handle := func(pattern, endpoint string, h http.HandlerFunc) {
		s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { s.metrics.observe(endpoint, w, r, h) })
	}
	handle("POST /v1/completions", "/v1/completions", s.handleCompletions)
	handle("POST /v1/chat/completions", "/v1/chat/completions", s.handleChat)
	handle("GET /v1/models", "/v1/models", s.handleModels)
	handle("GET /v1/models/{id...}", "/v1/models/{id}", s.handleModel)
	handle("GET /health", "/health", s.handleHealth)
	s.mux.Handle("GET /metrics", s.metrics.handler())
	handle("/", "other", s.handleOther)
	return s, nil
}

// ServeHTTP routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Close stops the request queue: requests waiting for a worker, and later
// ones, get 503. Running generations finish.
func (s *Server) Close() { s.sched.close() }

// Generated returns the number of tokens sampled since New, all requests
// together.
func (s *Server) Generated() int64 { return s.generated.Load() }

// writeJSON answers v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v) // the client may be gone: nothing to do then
}

func writeError(w http.ResponseWriter, e *httpError) { writeJSON(w, e.status, e.body()) }

func (s *Server) handleOther(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/completions", "/v1/chat/completions", "/v1/models":
		writeError(w, &httpError{status: http.StatusMethodNotAllowed, typ: "invalid_request_error",
			msg: fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path)})
		return
	}
	writeError(w, &httpError{status: http.StatusNotFound, typ: "invalid_request_error", code: "not_found",
		msg: fmt.Sprintf("no endpoint %s %s: see /v1/completions, /v1/chat/completions, /v1/models", r.Method, r.URL.Path)})
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, ModelList{Object: "list", Data: s.Models()})
}

func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	for _, m := range s.Models() {
		if m.ID == id || (m.CID != "" && m.CID == id) {
			writeJSON(w, http.StatusOK, m)
			return
		}
	}
	writeError(w, &httpError{status: http.StatusNotFound, typ: "invalid_request_error", param: "model", code: "model_not_found",
		msg: fmt.Sprintf("model %q is not loaded", id)})
}

// readRequest reads a capped body, refuses the fields this server does not
// implement (checkRequestKeys) and decodes the rest into v.
// readChecked reads a generation request into req and checks what every
// such request shares: the JSON body, the model (read through model once
// decoded) and the sampling options. On a bad request it writes the error
// and reports false.
func readChecked(w http.ResponseWriter, r *http.Request, req interface{ options() (options, *httpError) }, model *string, chat bool) (options, bool) {
	if e := readRequest(w, r, req, chat); e != nil {
		writeError(w, e)
		return options{}, false
	}
	if e := checkModel(*model); e != nil {
		writeError(w, e)
		return options{}, false
	}
	o, e := req.options()
	if e != nil {
		writeError(w, e)
		return options{}, false
	}
	return o, true
}

func readRequest(w http.ResponseWriter, r *http.Request, v any, chat bool) *httpError {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return &httpError{status: http.StatusRequestEntityTooLarge, typ: "invalid_request_error", code: "request_too_large",
				msg: fmt.Sprintf("request body over %d bytes", MaxBodyBytes)}
		}
		return badRequest("", "invalid_body", "reading the body: %v", err)
	}
	if e := checkRequestKeys(body, chat); e != nil {
		return e
	}
	if err := decodeJSON(body, v); err != nil {
		return badRequest("", "invalid_json", "the body is not a valid JSON request: %v", err)
	}
	return nil
}

// job is a validated generation request.
type job struct {
	model    string
	ad       *adaptor // nil: the base alone
	prompt   []int32
	max      int // new tokens at most
	opts     options
	stopIDs  []int32
	stopStrs []string
	alpha    float32
	seed     uint64
	arrived  time.Time // when the request came (metrics)
	echo     string    // completions: the prompt's text, put before the completion
	echoFrom int       // with echo and logprobs, the first prompt token listed; -1: none
}

// prepare resolves the model and checks the prompt against the context.
func (s *Server) prepare(ctx context.Context, modelName, promptParam string, prompt []int32, o options) (*job, *httpError) {
	ad, err := s.resolve(ctx, modelName)
	if err != nil {
		var bm *BaseMismatchError
		switch {
		case errors.As(err, &bm):
			return nil, badRequest("model", "adaptor_base_mismatch", "%v", err)
		case errors.Is(err, ErrUnknownModel):
			return nil, badRequest("model", "model_not_found", "%v", err)
		case errors.Is(err, ErrInvalidAdaptor):
			return nil, badRequest("model", "invalid_adaptor", "%v", err)
		case ctx.Err() != nil:
			return nil, &httpError{status: 499, typ: "invalid_request_error", msg: "client went away"}
		}
		return nil, &httpError{status: http.StatusInternalServerError, typ: "server_error", msg: err.Error()}
	}
	limit := s.cfg.MaxContext
	if len(prompt) > limit {
		return nil, badRequest(promptParam, "context_length_exceeded",
			"the prompt has %d tokens, over this model's context of %d", len(prompt), limit)
	}
	j := &job{model: modelName, ad: ad, prompt: prompt, opts: o, echoFrom: -1}
	j.max = o.maxTokens
	j.max = cmp.Or(j.max, s.cfg.MaxTokens)
	j.max = min(j.max, max(1, limit-len(prompt)))
	switch {
	case o.alpha != nil:
		j.alpha = *o.alpha
	case s.cfg.Alpha != nil:
		j.alpha = *s.cfg.Alpha
	case ad != nil:
		j.alpha = ad.stages[len(ad.stages)-1].Config.Alpha
	}
	if o.seed != nil {
		j.seed = *o.seed
	} else {
		j.seed = mrand.Uint64()
	}
	j.stopStrs = o.stop
	return j, nil
}

func (j *job) info(baseHash string) *CarryOnInfo {
	ci := &CarryOnInfo{BaseHash: baseHash, Stages: []string{}, Seed: j.seed}
	if j.ad != nil {
		ci.Stages = j.ad.chain
		ci.Alpha = float64(j.alpha)
	}
	return ci
}

// errBusy is the answer when the queue is full.
var errBusy = &httpError{status: http.StatusServiceUnavailable, typ: "server_error", code: "server_busy",
	msg: "too many requests are waiting for a worker: try again later"}

// clientKey is who a request is queued for: its "user" field, else the
// client's address without the port.
func clientKey(r *http.Request, user string) string {
	if user != "" {
		return "user:" + user
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "addr:" + host
}

// acquire takes a worker slot for r, waiting in the queue in its client's
// turn unless the queue is full or the client goes away.
func (s *Server) acquire(r *http.Request, user string) (release func(), err error) {
	release, err = s.sched.acquire(r.Context(), clientKey(r, user))
	if errors.Is(err, errClosed) {
		return nil, &httpError{status: http.StatusServiceUnavailable, typ: "server_error", code: "shutting_down", msg: err.Error()}
	}
	return release, err
}

// result is a finished generation.
type result struct {
	text   string
	tokens int    // tokens generated (a stop token excluded)
	finish string // "stop" or "length"
	// With logprobs: one entry per generated token, and (echo) per prompt
	// token listed.
	logprobs, promptLogprobs []tokenLogprob
}

// tokenLogprob is a token with its log-probability, the most likely
// tokens at its position, and where its text begins in the response text.
type tokenLogprob struct {
	id     int32
	lp     *float64 // nil: nothing precedes the token
	top    []model.TokenLogprob
	offset int
}

// emitFunc receives each decided piece of text, with the tokens generated
// since the previous call (when logprobs are asked for).
type emitFunc func(piece string, toks []tokenLogprob) error

// run generates for j, calling emit (when not nil) with each piece of text
// as soon as it is decided; the pieces add up to result.text. The caller
// holds a worker slot. It returns ctx's error when ctx ends first, and
// emit's error when emit fails.
func (s *Server) run(ctx context.Context, j *job, emit emitFunc) (result, error) {
	var stages []*carryon.Model
	if j.ad != nil {
		stages = j.ad.stages
	}
	stop := map[int32]bool{}
	stopIDs := append([]int32(nil), j.stopIDs...)
	if eos := s.tok.EOS(); eos >= 0 {
		stopIDs = append(stopIDs, eos)
	}
	for _, id := range append(stopIDs, s.base.Config.EOS) {
		stop[id] = true
	}
	var (
		ts      = model.NewTextStream(s.continuation, j.stopStrs)
		werr    error
		echoed  bool // the echo went to emit
		n       int
		logits  []float32 // the latest token's, with logprobs
		res     result
		pending []tokenLogprob // logprobs not yet emitted
	)
	opt := carryon.GenerateOptions{MaxTokens: j.max, Temperature: j.opts.temperature, TopK: j.opts.topK, TopP: j.opts.topP,
		PresencePenalty: j.opts.presence, FrequencyPenalty: j.opts.frequency, Seed: j.seed,
		Stop: stopIDs, Bridge: s.cfg.Bridge, Mix: s.cfg.Mix}
	if j.opts.logprobs {
		opt.OnLogits = func(l []float32) { logits = l }
		if j.echoFrom >= 0 {
			opt.OnPromptLogits = func(i int, l []float32) {
				if i < j.echoFrom {
					return
				}
				lp, top := model.Logprobs(l, j.prompt[i], j.opts.topLogprobs)
				res.promptLogprobs = append(res.promptLogprobs, tokenLogprob{id: j.prompt[i], lp: &lp, top: top,
					offset: len(s.tok.Decode(j.prompt[j.echoFrom:i]))})
			}
			if j.echoFrom == 0 { // nothing precedes the first token
				res.promptLogprobs = append(res.promptLogprobs, tokenLogprob{id: j.prompt[0]})
			}
		}
	}
	sendEcho := func() error {
		echoed = true
		if emit == nil || (j.echo == "" && len(res.promptLogprobs) == 0) {
			return nil
		}
		return emit(j.echo, res.promptLogprobs)
	}
	opt.OnToken = func(id int32) bool {
		if !echoed {
			if werr = sendEcho(); werr != nil {
				return false
			}
		}
		n++
		s.generated.Add(1)
		s.metrics.token()
		if n == 1 && !j.arrived.IsZero() {
			s.metrics.firstTok.Observe(time.Since(j.arrived).Seconds())
		}
		if s.tokenHook != nil {
			s.tokenHook(ctx, n)
		}
		if ctx.Err() != nil {
			return false
		}
		if stop[id] {
			return true // GenerateIDs ends on it
		}
		if j.opts.logprobs {
			lp, top := model.Logprobs(logits, id, j.opts.topLogprobs)
			tl := tokenLogprob{id: id, lp: &lp, top: top, offset: len(j.echo) + len(s.continuation(ts.Tokens()))}
			res.logprobs = append(res.logprobs, tl)
			pending = append(pending, tl)
		}
		piece, more := ts.Add(id)
		if piece != "" && emit != nil {
			if werr = emit(piece, pending); werr != nil {
				return false
			}
			pending = nil
		}
		return more
	}
	s.metrics.prompt.Add(float64(len(j.prompt)))
	_, stopped, err := carryon.GenerateIDs(s.base, stages, j.alpha, j.prompt, opt)
	switch {
	case ctx.Err() != nil:
		return result{}, ctx.Err()
	case werr != nil:
		return result{}, werr
	case err != nil:
		return result{}, fmt.Errorf("serve: %w", err)
	}
	if !echoed {
		if err := sendEcho(); err != nil {
			return result{}, err
		}
	}
	rest, text, hit := ts.Finish()
	res.text, res.tokens, res.finish = text, len(ts.Tokens()), "length"
	if hit || stopped {
		res.finish = "stop"
	}
	if emit != nil && (rest != "" || len(pending) > 0) {
		if err := emit(rest, pending); err != nil {
			return result{}, err
		}
	}
	return res, nil
}

// continuation decodes tokens that follow the prompt: a SentencePiece
// token's leading space is kept (the completion " 42" of "Answer:", not
// "42").
func (s *Server) continuation(ids []int32) string { return tokenizer.DecodeContinuation(s.tok, ids) }

// tokenBytes returns a token's raw bytes (part of a character, for some),
// as it reads inside a text.
func (s *Server) tokenBytes(id int32) []byte {
	return tokenizer.DecodeBytesContinuation(s.tok, []int32{id})
}

func (s *Server) tokenText(id int32) string { return s.continuation([]int32{id}) }

// completionLogprobs renders logprobs in the completions format.
func (s *Server) completionLogprobs(toks []tokenLogprob) *CompletionLogprobs {
	out := &CompletionLogprobs{Tokens: []string{}, TokenLogprobs: []*float64{}, TopLogprobs: []map[string]float64{}, TextOffset: []int{}}
	for _, t := range toks {
		out.Tokens = append(out.Tokens, s.tokenText(t.id))
		out.TokenLogprobs = append(out.TokenLogprobs, t.lp)
		var top map[string]float64
		if t.lp != nil {
			top = make(map[string]float64, len(t.top))
			for _, c := range t.top {
				text := s.tokenText(c.ID)
				if _, dup := top[text]; !dup { // two tokens may read the same
					top[text] = c.Logprob
				}
			}
		}
		out.TopLogprobs = append(out.TopLogprobs, top)
		out.TextOffset = append(out.TextOffset, t.offset)
	}
	return out
}

// chatLogprobs renders logprobs in the chat format.
func (s *Server) chatLogprobs(toks []tokenLogprob) *ChatLogprobs {
	out := &ChatLogprobs{Content: []TokenLogprob{}}
	for _, t := range toks {
		tl := TokenLogprob{Token: s.tokenText(t.id), Logprob: *t.lp, Bytes: intBytes(s.tokenBytes(t.id)), TopLogprobs: []TopLogprob{}}
		for _, c := range t.top {
			tl.TopLogprobs = append(tl.TopLogprobs, TopLogprob{Token: s.tokenText(c.ID), Logprob: c.Logprob, Bytes: intBytes(s.tokenBytes(c.ID))})
		}
		out.Content = append(out.Content, tl)
	}
	return out
}

func intBytes(b []byte) []int {
	out := make([]int, len(b))
	for i, c := range b {
		out[i] = int(c)
	}
	return out
}

// newID returns a response id with prefix.
func newID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func ptr[T any](v T) *T { return &v }

// sse writes server-sent events.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func startSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, rc: http.NewResponseController(w)}
}

// send writes one "data:" event (v as JSON, or a string as is) and flushes.
func (e *sse) send(v any) error {
	var buf bytes.Buffer
	buf.WriteString("data: ")
	if str, ok := v.(string); ok {
		buf.WriteString(str)
	} else {
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			return err
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
	}
	buf.WriteString("\n\n")
	if _, err := e.w.Write(buf.Bytes()); err != nil {
		return err
	}
	return e.rc.Flush()
}

// fail reports err on a stream that has started (no status line is left to
// set): an error event, and no [DONE].
func (e *sse) fail(err error) {
	e.send((&httpError{typ: "server_error", msg: err.Error()}).body())
}

// failRun answers an error of run before anything was written.
func failRun(w http.ResponseWriter, ctx context.Context, err error) {
	if ctx.Err() != nil {
		return // the client is gone
	}
	if he, ok := err.(*httpError); ok {
		writeError(w, he)
		return
	}
	writeError(w, &httpError{status: http.StatusInternalServerError, typ: "server_error", msg: err.Error()})
}

func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	var req CompletionRequest
	o, ok := readChecked(w, r, &req, &req.Model, false)
	if !ok {
		return
	}
	text, ids, err := parsePrompt(req.Prompt)
	if err != nil {
		writeError(w, badRequest("prompt", "invalid_prompt", "%v", err))
		return
	}
	echo, echoFrom := text, 0
	if ids == nil {
		if bos := s.tok.BOS(); bos >= 0 {
			ids = append(ids, bos)
			echoFrom = 1 // BOS is context, not prompt text
		}
		ids = append(ids, s.tok.Encode(text)...)
		if len(ids) == 0 {
			writeError(w, badRequest("prompt", "invalid_prompt", "the prompt is empty (and the tokenizer has no BOS)"))
			return
		}
	} else {
		echo = s.tok.Decode(ids)
	}
	for i, id := range ids {
		if id < 0 || int(id) >= s.base.Config.Vocab {
			writeError(w, badRequest("prompt", "invalid_prompt", "token %d at position %d is outside the vocabulary [0, %d)", id, i, s.base.Config.Vocab))
			return
		}
	}
	if !o.echo {
		echo = ""
	}
	ctx := r.Context()
	j, e := s.prepare(ctx, req.Model, "prompt", ids, o)
	if e != nil {
		failRun(w, ctx, e)
		return
	}
	j.arrived, j.echo = arrived, echo
	if o.echo && o.logprobs {
		j.echoFrom = echoFrom
	}
	release, id, created, ok := s.start(w, r, req.User, "cmpl-")
	if !ok {
		return
	}
	defer release()
	chunk := func(text string, toks []tokenLogprob, finish *string) CompletionResponse {
		c := CompletionChoice{Text: text, FinishReason: finish}
		if o.logprobs && finish == nil {
			c.Logprobs = s.completionLogprobs(toks)
		}
		return CompletionResponse{ID: id, Object: "text_completion", Created: created, Model: j.model, Choices: []CompletionChoice{c}}
	}
	if !o.stream {
		res, err := s.run(ctx, j, nil)
		if err != nil {
			failRun(w, ctx, err)
			return
		}
		out := chunk(echo+res.text, append(res.promptLogprobs, res.logprobs...), nil)
		out.Choices[0].FinishReason = &res.finish
		out.Usage = usage(j, res)
		out.CarryOn = j.info(s.base.WeightsHash)
		writeJSON(w, http.StatusOK, out)
		return
	}
	ev := startSSE(w)
	res, err := s.run(ctx, j, func(piece string, toks []tokenLogprob) error { return ev.send(chunk(piece, toks, nil)) })
	endStream(ctx, ev, j, res, err, o.usage, j.info(s.base.WeightsHash), func(finish *string) CompletionResponse {
		return chunk("", nil, finish)
	})
}

func usage(j *job, res result) *Usage {
	return &Usage{PromptTokens: len(j.prompt), CompletionTokens: res.tokens, TotalTokens: len(j.prompt) + res.tokens}
}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	var req ChatRequest
	o, ok := readChecked(w, r, &req, &req.Model, true)
	if !ok {
		return
	}
	msgs, e := checkMessages(req.Messages)
	if e != nil {
		writeError(w, e)
		return
	}
	ids, stopIDs, stopStrs := s.chat.render(s.tok, msgs)
	ctx := r.Context()
	j, e := s.prepare(ctx, req.Model, "messages", ids, o)
	if e != nil {
		failRun(w, ctx, e)
		return
	}
	j.arrived = arrived
	j.stopIDs = stopIDs
	j.stopStrs = append(append([]string(nil), j.stopStrs...), stopStrs...)
	release, id, created, ok := s.start(w, r, req.User, "chatcmpl-")
	if !ok {
		return
	}
	defer release()
	if !o.stream {
		res, err := s.run(ctx, j, nil)
		if err != nil {
			failRun(w, ctx, err)
			return
		}
		c := ChatChoice{Message: &ChatOutput{Role: "assistant", Content: res.text}, FinishReason: &res.finish}
		if o.logprobs {
			c.Logprobs = s.chatLogprobs(res.logprobs)
		}
		writeJSON(w, http.StatusOK, ChatResponse{ID: id, Object: "chat.completion", Created: created, Model: j.model,
			Choices: []ChatChoice{c}, Usage: usage(j, res), CarryOn: j.info(s.base.WeightsHash)})
		return
	}
	chunk := func(d ChatDelta, toks []tokenLogprob, finish *string) ChatResponse {
		c := ChatChoice{Delta: &d, FinishReason: finish}
		if o.logprobs && toks != nil {
			c.Logprobs = s.chatLogprobs(toks)
		}
		return ChatResponse{ID: id, Object: "chat.completion.chunk", Created: created, Model: j.model, Choices: []ChatChoice{c}}
	}
	ev := startSSE(w)
	if ev.send(chunk(ChatDelta{Role: "assistant", Content: ptr("")}, nil, nil)) != nil {
		return
	}
	res, err := s.run(ctx, j, func(piece string, toks []tokenLogprob) error {
		return ev.send(chunk(ChatDelta{Content: &piece}, toks, nil))
	})
	endStream(ctx, ev, j, res, err, o.usage, j.info(s.base.WeightsHash), func(finish *string) ChatResponse {
		return chunk(ChatDelta{}, nil, finish)
	})
}

// start admits a request of user to a worker slot (failing the request
// when it may not run) and names its answer: an ID with prefix and the
// creation time. Call release when the answer is written.
func (s *Server) start(w http.ResponseWriter, r *http.Request, user, prefix string) (release func(), id string, created int64, ok bool) {
	release, err := s.acquire(r, user)
	if err != nil {
		failRun(w, r.Context(), err)
		return nil, "", 0, false
	}
	return release, newID(prefix), time.Now().Unix(), true
}

// endStream ends the stream of a run that returned res and err: the chunk
// with the finish reason (chunk(&finish)) carries the carry-on's info, a
// chunk without choices the usage when the request asked for it, then
// [DONE]. A failed run sends its error instead, unless the client left.
func endStream[C CompletionChoice | ChatChoice](ctx context.Context, ev *sse, j *job, res result, err error, wantUsage bool, info *CarryOnInfo, chunk func(finish *string) Response[C]) {
	if err != nil {
		if ctx.Err() == nil {
			ev.fail(err)
		}
		return
	}
	last := chunk(&res.finish)
	last.CarryOn = info
	if ev.send(last) != nil {
		return
	}
	if wantUsage {
		u := chunk(nil)
		u.Choices, u.Usage = []C{}, usage(j, res)
		if ev.send(u) != nil {
			return
		}
	}
	ev.send("[DONE]")
}

// chatRoles are the roles a message may have.
var chatRoles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true}

// chatMsg is a checked message.
type chatMsg struct{ role, content string }

func checkMessages(in []ChatMessage) ([]chatMsg, *httpError) {
	if len(in) == 0 {
		return nil, badRequest("messages", "invalid_messages", "messages is empty")
	}
	if len(in) > maxMessages {
		return nil, badRequest("messages", "invalid_messages", "%d messages, at most %d", len(in), maxMessages)
	}
	out := make([]chatMsg, len(in))
	for i, m := range in {
		if !chatRoles[m.Role] {
			return nil, badRequest(fmt.Sprintf("messages[%d].role", i), "invalid_messages",
				"role %q: want system, developer, user, assistant or tool", m.Role)
		}
		c, err := parseContent(m.Content)
		if err != nil {
			return nil, badRequest(fmt.Sprintf("messages[%d].content", i), "invalid_messages", "%v", err)
		}
		out[i] = chatMsg{m.Role, c}
	}
	return out, nil
}

// chatTemplate renders messages into a prompt (see the package comment).
type chatTemplate struct {
	chatml     bool
	start, end int32 // <|im_start|>, <|im_end|>
}

func newChatTemplate(tok tokenizer.Tokenizer) chatTemplate {
	if t, ok := tok.(interface{ ID(string) (int32, bool) }); ok {
		s, ok1 := t.ID("<|im_start|>")
		e, ok2 := t.ID("<|im_end|>")
		if ok1 && ok2 {
			return chatTemplate{chatml: true, start: s, end: e}
		}
	}
	return chatTemplate{}
}

// render returns the prompt's tokens and the extra stop tokens and strings
// of the template.
func (t chatTemplate) render(tok tokenizer.Tokenizer, msgs []chatMsg) (ids, stopIDs []int32, stopStrs []string) {
	plain := tok.Encode
	if o, ok := tok.(interface{ EncodeOrdinary(string) []int32 }); ok {
		plain = o.EncodeOrdinary
	}
	if bos := tok.BOS(); bos >= 0 {
		ids = append(ids, bos)
	}
	if t.chatml {
		for _, m := range msgs {
			ids = append(ids, t.start)
			ids = append(ids, tok.Encode(m.role+"\n")...)
			ids = append(ids, plain(m.content)...)
			ids = append(ids, t.end)
			ids = append(ids, tok.Encode("\n")...)
		}
		ids = append(ids, t.start)
		ids = append(ids, tok.Encode("assistant\n")...)
		return ids, []int32{t.end}, nil
	}
	for _, m := range msgs {
		ids = append(ids, tok.Encode("<|"+m.role+"|>\n")...)
		ids = append(ids, plain(m.content)...)
		ids = append(ids, tok.Encode("\n")...)
	}
	ids = append(ids, tok.Encode("<|assistant|>\n")...)
	return ids, nil, []string{"\n<|"}
}
