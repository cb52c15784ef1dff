package serve

// The OpenAI-compatible wire types (the subset this server implements) and
// their parsing and validation.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"reflect"
	"sort"
	"strings"
)

// Sampling holds the request fields /v1/completions and
// /v1/chat/completions share.
type Sampling struct {
	// MaxTokens caps the new tokens; absent means Config.MaxTokens. It is
	// further capped by the base's context (MaxPos) less the prompt.
	MaxTokens *int `json:"max_tokens,omitempty"`
	// Temperature in [0, 2]; 0 is greedy. Absent means 1, as in OpenAI.
	Temperature *float64 `json:"temperature,omitempty"`
	// TopP in (0, 1] keeps the smallest set of most likely tokens whose
	// probabilities add up to at least top_p (nucleus sampling). Absent
	// means 1 (all).
	TopP *float64 `json:"top_p,omitempty"`
	// TopK (an extension, as in vLLM and llama.cpp) samples among the k
	// most likely tokens; 0 or absent means all.
	TopK *int `json:"top_k,omitempty"`
	// Stop is a string or an array of up to 4 non-empty strings; the text
	// ends before the first occurrence of any of them.
	Stop json.RawMessage `json:"stop,omitempty"`
	// Stream asks for server-sent events.
	Stream        bool           `json:"stream,omitempty"`
	StreamOptions *StreamOptions `json:"stream_options,omitempty"`
	// Seed fixes the sampling stream; absent means a random one.
	Seed *int64 `json:"seed,omitempty"`
	// N must be 1 (or absent).
	N *int `json:"n,omitempty"`
	// PresencePenalty in [-2, 2] is subtracted from the logit of every
	// token that already occurs in the completion; FrequencyPenalty in
	// [-2, 2] times the number of times it occurs (OpenAI's definition).
	PresencePenalty  *float64 `json:"presence_penalty,omitempty"`
	FrequencyPenalty *float64 `json:"frequency_penalty,omitempty"`
	// User identifies the end user: requests queue round-robin per user
	// (per client address when absent).
	User string `json:"user,omitempty"`
	// Alpha (an extension) overrides the server's α, the scale of every
	// carry-on stage's customisation (0: the base alone).
	Alpha *float64 `json:"carryon_alpha,omitempty"`
}

// StreamOptions are the options of a streamed response.
type StreamOptions struct {
	// IncludeUsage adds a last chunk, before [DONE], with the usage and
	// no choices.
	IncludeUsage bool `json:"include_usage"`
}

// CompletionRequest is the body of POST /v1/completions.
type CompletionRequest struct {
	// Model is "base", a loaded adaptor's name or CID, or (with on-demand
	// loading) any adaptor CID.
	Model string `json:"model"`
	// Prompt is a string, an array holding one string, or an array of
	// token ids. The server adds the tokenizer's BOS before text prompts.
	Prompt json.RawMessage `json:"prompt"`
	// Logprobs, when set (0..20), asks for the log-probability of each
	// generated token and of the Logprobs most likely tokens at its
	// position.
	Logprobs *int `json:"logprobs,omitempty"`
	// Echo puts the prompt before the completion in the text (and, with
	// Logprobs, its tokens in the log-probabilities).
	Echo bool `json:"echo,omitempty"`
	Sampling
}

// ChatMessage is one message of a chat.
type ChatMessage struct {
	Role string `json:"role"`
	// Content is a string, null, or an array of {"type": "text", "text":
	// ...} parts (joined).
	Content json.RawMessage `json:"content"`
}

// ChatRequest is the body of POST /v1/chat/completions.
type ChatRequest struct {
	Model    string        `json:"model"`
	Messages []ChatMessage `json:"messages"`
	// MaxCompletionTokens is the newer name of MaxTokens; it wins when both
	// are set.
	MaxCompletionTokens *int `json:"max_completion_tokens,omitempty"`
	// Logprobs asks for the log-probability of each generated token, and
	// TopLogprobs (0..20, needs Logprobs) for the most likely tokens at
	// each position.
	Logprobs    bool `json:"logprobs,omitempty"`
	TopLogprobs *int `json:"top_logprobs,omitempty"`
	Sampling
}

// Usage counts tokens: the prompt's (BOS and template included) and the
// generated ones (a stop token excluded).
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// CarryOnInfo (an extension) says how a response was made.
type CarryOnInfo struct {
	BaseHash string   `json:"base_hash"`
	Stages   []string `json:"stages"` // adaptor CIDs applied, in order (none: the base alone)
	Alpha    float64  `json:"alpha"`
	Seed     uint64   `json:"seed"`
}

// CompletionChoice is a choice of a completion or of one of its chunks.
type CompletionChoice struct {
	Text         string              `json:"text"`
	Index        int                 `json:"index"`
	Logprobs     *CompletionLogprobs `json:"logprobs"` // null unless asked for
	FinishReason *string             `json:"finish_reason"`
}

// CompletionLogprobs are the log-probabilities of a completion's tokens (of
// a chunk's, when streamed), in the legacy completions format: one entry
// per token in each list.
type CompletionLogprobs struct {
	Tokens []string `json:"tokens"`
	// TokenLogprobs is each token's natural log-probability under the
	// model (null for a prompt's first token when nothing precedes it).
	TokenLogprobs []*float64 `json:"token_logprobs"`
	// TopLogprobs maps the most likely tokens at each position to their
	// log-probabilities (null where TokenLogprobs is).
	TopLogprobs []map[string]float64 `json:"top_logprobs"`
	// TextOffset is the byte offset in the choice's text where each
	// token's text begins.
	TextOffset []int `json:"text_offset"`
}

// ChatLogprobs are the log-probabilities of a chat completion's tokens.
type ChatLogprobs struct {
	Content []TokenLogprob `json:"content"`
}

// TokenLogprob is one token with its log-probability and the most likely
// alternatives at its position.
type TokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float64      `json:"logprob"`
	Bytes       []int        `json:"bytes"` // the token's UTF-8 bytes (a token may hold part of a character)
	TopLogprobs []TopLogprob `json:"top_logprobs"`
}

// TopLogprob is one of the most likely tokens at a position.
type TopLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// Response is the answer to a completion request and each chunk of its
// stream, with the endpoint's choices C.
type Response[C CompletionChoice | ChatChoice] struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []C          `json:"choices"`
	Usage   *Usage       `json:"usage,omitempty"`
	CarryOn *CarryOnInfo `json:"carryon,omitempty"`
}

// CompletionResponse is the answer to /v1/completions, and each chunk of
// its stream (Object "text_completion" for both, as OpenAI does).
type CompletionResponse = Response[CompletionChoice]

// ChatDelta is the increment a chat chunk carries.
type ChatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// ChatOutput is the message of a chat completion.
type ChatOutput struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ChatChoice is a choice of a chat completion (Message) or of a chunk
// (Delta).
type ChatChoice struct {
	Index        int           `json:"index"`
	Message      *ChatOutput   `json:"message,omitempty"`
	Delta        *ChatDelta    `json:"delta,omitempty"`
	Logprobs     *ChatLogprobs `json:"logprobs"` // null unless asked for
	FinishReason *string       `json:"finish_reason"`
}

// ChatResponse is the answer to /v1/chat/completions (Object
// "chat.completion") and each chunk of its stream ("chat.completion.chunk").
type ChatResponse = Response[ChatChoice]

// ModelCard describes one model of GET /v1/models: "base" or an adaptor.
type ModelCard struct {
	ID      string `json:"id"`
	Object  string `json:"object"` // "model"
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
	// Extensions.
	CID      string   `json:"carryon_cid,omitempty"`       // the adaptor's CID
	BaseHash string   `json:"carryon_base_hash"`           // weights hash of the base
	Parent   string   `json:"carryon_parent,omitempty"`    // boosting parent's CID
	Stages   []string `json:"carryon_stages,omitempty"`    // CIDs applied, root first
	Step     int      `json:"carryon_step,omitempty"`      // optimiser steps of the adaptor
	OnDemand bool     `json:"carryon_on_demand,omitempty"` // loaded for a request (may be evicted)
}

// ModelList is the answer to GET /v1/models.
type ModelList struct {
	Object string      `json:"object"` // "list"
	Data   []ModelCard `json:"data"`
}

// APIError is the error object of an error response.
type APIError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// ErrorResponse is the body of every error answer: {"error": {...}}.
type ErrorResponse struct {
	Error APIError `json:"error"`
}

// httpError is an error with its HTTP status and OpenAI error fields.
type httpError struct {
	status      int
	typ         string
	param, code string
	msg         string
}

func (e *httpError) Error() string { return e.msg }

func (e *httpError) body() ErrorResponse {
	a := APIError{Message: e.msg, Type: e.typ}
	if e.param != "" {
		a.Param = &e.param
	}
	if e.code != "" {
		a.Code = &e.code
	}
	return ErrorResponse{Error: a}
}

// badRequest is a 400 invalid_request_error about param.
func badRequest(param, code, format string, args ...any) *httpError {
	return &httpError{status: http.StatusBadRequest, typ: "invalid_request_error", param: param, code: code, msg: fmt.Sprintf(format, args...)}
}

// Caps on request fields.
const (
	maxStops       = 4
	maxStopLen     = 256
	maxMessages    = 4096
	maxModelName   = 256
	maxTopK        = 1 << 20
	maxTemperature = 2
	maxPenalty     = 2
	maxLogprobs    = 20 // top log-probabilities per position
)

// decodeJSON decodes exactly one JSON value from body into v.
func decodeJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

// isNull reports whether raw is absent or JSON null.
func isNull(raw json.RawMessage) bool {
	s := bytes.TrimSpace(raw)
	return len(s) == 0 || bytes.Equal(s, []byte("null"))
}

// parseStop reads "stop": absent/null, a string, or an array of strings.
func parseStop(raw json.RawMessage) ([]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		raw = json.RawMessage(`[` + string(raw) + `]`)
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, errors.New("stop must be a string or an array of strings")
	}
	if len(list) > maxStops {
		return nil, fmt.Errorf("stop has %d sequences, at most %d", len(list), maxStops)
	}
	for _, s := range list {
		if s == "" || len(s) > maxStopLen {
			return nil, fmt.Errorf("stop sequences must have 1..%d bytes", maxStopLen)
		}
	}
	return list, nil
}

// parsePrompt reads "prompt": a string, [string] or [int, ...].
func parsePrompt(raw json.RawMessage) (text string, ids []int32, err error) {
	if isNull(raw) {
		return "", nil, errors.New("prompt is required")
	}
	if err := json.Unmarshal(raw, &text); err == nil {
		return text, nil, nil
	}
	var texts []string
	if err := json.Unmarshal(raw, &texts); err == nil {
		if len(texts) != 1 {
			return "", nil, fmt.Errorf("prompt holds %d strings: this server takes one prompt per request", len(texts))
		}
		return texts[0], nil, nil
	}
	if err := json.Unmarshal(raw, &ids); err == nil {
		if len(ids) == 0 {
			return "", nil, errors.New("prompt is an empty array of tokens")
		}
		return "", ids, nil
	}
	return "", nil, errors.New("prompt must be a string, an array of one string or an array of token ids")
}

// parseContent reads a message's content: a string, null or text parts.
func parseContent(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("content must be a string, null or an array of text parts")
	}
	var b strings.Builder
	for i, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return "", fmt.Errorf("content part %d has type %q: only text parts are supported", i, p.Type)
		}
		b.WriteString(*p.Text)
	}
	return b.String(), nil
}

// options are validated Sampling fields.
type options struct {
	maxTokens   int // 0: the server's default
	temperature float64
	topK        int
	topP        float64 // 1: all
	presence    float64 // presence_penalty
	frequency   float64 // frequency_penalty
	logprobs    bool    // report log-probabilities
	topLogprobs int     // and the most likely tokens at each position
	echo        bool    // completions: the prompt precedes the text
	stop        []string
	stream      bool
	usage       bool // stream_options.include_usage
	seed        *uint64
	alpha       *float32
}

// validate checks s and returns the options it asks for.
func (s *Sampling) validate() (options, *httpError) {
	o := options{temperature: 1, topP: 1, stream: s.Stream}
	if s.MaxTokens != nil {
		if *s.MaxTokens < 1 {
			return o, badRequest("max_tokens", "invalid_value", "max_tokens is %d, want >= 1", *s.MaxTokens)
		}
		o.maxTokens = *s.MaxTokens
	}
	if t := s.Temperature; t != nil {
		if !(*t >= 0 && *t <= maxTemperature) {
			return o, badRequest("temperature", "invalid_value", "temperature is %v, want a value in [0, %d]", *t, maxTemperature)
		}
		o.temperature = *t
	}
	if p := s.TopP; p != nil {
		if !(*p > 0 && *p <= 1) {
			return o, badRequest("top_p", "invalid_value", "top_p is %v, want a value in (0, 1]", *p)
		}
		o.topP = *p
	}
	for _, pen := range []struct {
		name string
		v    *float64
		dst  *float64
	}{{"presence_penalty", s.PresencePenalty, &o.presence}, {"frequency_penalty", s.FrequencyPenalty, &o.frequency}} {
		if pen.v == nil {
			continue
		}
		if !(*pen.v >= -maxPenalty && *pen.v <= maxPenalty) {
			return o, badRequest(pen.name, "invalid_value", "%s is %v, want a value in [-%d, %d]", pen.name, *pen.v, maxPenalty, maxPenalty)
		}
		*pen.dst = *pen.v
	}
	if k := s.TopK; k != nil {
		if *k < 0 || *k > maxTopK {
			return o, badRequest("top_k", "invalid_value", "top_k is %d, want a value in [0, %d]", *k, maxTopK)
		}
		o.topK = *k
	}
	stop, err := parseStop(s.Stop)
	if err != nil {
		return o, badRequest("stop", "invalid_value", "%v", err)
	}
	o.stop = stop
	if s.N != nil && *s.N != 1 {
		return o, badRequest("n", "invalid_value", "n is %d: this server makes one choice per request", *s.N)
	}
	if s.StreamOptions != nil {
		if !s.Stream {
			return o, badRequest("stream_options", "invalid_value", "stream_options is only allowed with stream: true")
		}
		o.usage = s.StreamOptions.IncludeUsage
	}
	if s.Seed != nil {
		v := uint64(*s.Seed)
		o.seed = &v
	}
	if a := s.Alpha; a != nil {
		if math.IsNaN(*a) || math.Abs(*a) > math.MaxFloat32 {
			return o, badRequest("carryon_alpha", "invalid_value", "carryon_alpha is %v, want a finite value", *a)
		}
		v := float32(*a)
		o.alpha = &v
	}
	return o, nil
}

// completionOptions validates a completion request's options.
func (r *CompletionRequest) options() (options, *httpError) {
	o, e := r.Sampling.validate()
	if e != nil {
		return o, e
	}
	if lp := r.Logprobs; lp != nil {
		if *lp < 0 || *lp > maxLogprobs {
			return o, badRequest("logprobs", "invalid_value", "logprobs is %d, want a value in [0, %d]", *lp, maxLogprobs)
		}
		o.logprobs, o.topLogprobs = true, *lp
	}
	o.echo = r.Echo
	return o, nil
}

// options validates a chat request's options.
func (r *ChatRequest) options() (options, *httpError) {
	if r.MaxCompletionTokens != nil {
		r.MaxTokens = r.MaxCompletionTokens
	}
	o, e := r.Sampling.validate()
	if e != nil {
		return o, e
	}
	o.logprobs = r.Logprobs
	if tl := r.TopLogprobs; tl != nil {
		switch {
		case *tl < 0 || *tl > maxLogprobs:
			return o, badRequest("top_logprobs", "invalid_value", "top_logprobs is %d, want a value in [0, %d]", *tl, maxLogprobs)
		case !r.Logprobs:
			return o, badRequest("top_logprobs", "invalid_value", "top_logprobs needs logprobs: true")
		}
		o.topLogprobs = *tl
	}
	return o, nil
}

// checkModel checks the model field's presence and size.
func checkModel(m string) *httpError {
	if m == "" {
		return badRequest("model", "missing_model", "model is required: \"base\", or an adaptor's name or CID (GET /v1/models lists them)")
	}
	if len(m) > maxModelName {
		return badRequest("model", "model_not_found", "model name of %d bytes, at most %d", len(m), maxModelName)
	}
	return nil
}

// unsupported names request fields of OpenAI's API and of llama.cpp's
// server that this server does not implement, with the reason its 400
// gives. A field a request type does not declare and that is not listed
// here is refused as unknown; a listed field is accepted only with a
// neutral value (see neutral).
var unsupported = map[string]string{
	"tools":               "tool calling is not implemented",
	"tool_choice":         "tool calling is not implemented",
	"parallel_tool_calls": "tool calling is not implemented",
	"functions":           "function calling is not implemented",
	"function_call":       "function calling is not implemented",
	"response_format":     "structured output (JSON mode, JSON schema) is not implemented",
	"logit_bias":          "logit_bias is not implemented",
	"best_of":             "best_of is not implemented: this server makes one choice per request",
	"suffix":              "insertion (suffix) is not implemented",
	"modalities":          "only text output is implemented",
	"audio":               "only text output is implemented",
	"prediction":          "predicted outputs are not implemented",
	"store":               "this server stores no completions",
	"metadata":            "this server stores no completions",
	"service_tier":        "this server has one service tier",
	"reasoning_effort":    "this server has no reasoning setting",
	"web_search_options":  "web search is not implemented",
	"min_p":               "min_p is not implemented: use top_p or top_k",
	"typical_p":           "typical_p is not implemented: use top_p or top_k",
	"repeat_penalty":      "repeat_penalty is not implemented: use presence_penalty or frequency_penalty",
	"mirostat":            "mirostat sampling is not implemented",
	"grammar":             "grammar-constrained sampling is not implemented",
	"json_schema":         "structured output (JSON schema) is not implemented",
	"n_predict":           "use max_tokens",
	"n_probs":             "use logprobs (completions) or top_logprobs (chat)",
	// In a chat message.
	"name":         "message names are not part of the chat template",
	"tool_calls":   "tool calling is not implemented",
	"tool_call_id": "tool calling is not implemented",
	"refusal":      "refusals in the conversation are not implemented",
}

// neutral lists, per unsupported field, the values that ask for nothing
// (OpenAI's defaults); JSON null, [] and {} always do.
var neutral = map[string][]string{
	"best_of":             {"1"},
	"store":               {"false"},
	"response_format":     {`{"type":"text"}`},
	"tool_choice":         {`"none"`},
	"parallel_tool_calls": {"true", "false"},
	"service_tier":        {`"auto"`, `"default"`},
	"modalities":          {`["text"]`},
	"name":                {`""`},
}

// isNeutral reports whether raw, the value of field key, asks for nothing.
func isNeutral(key string, raw json.RawMessage) bool {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return false
	}
	v := buf.String()
	if v == "null" || v == "[]" || v == "{}" {
		return true
	}
	for _, n := range neutral[key] {
		if v == n {
			return true
		}
	}
	return false
}

// jsonFields returns the JSON names of t's fields, those of embedded
// structs included.
func jsonFields(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			for k := range jsonFields(f.Type) {
				out[k] = true
			}
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = true
	}
	return out
}

// The fields each request object may carry.
var (
	completionFields = jsonFields(reflect.TypeFor[CompletionRequest]())
	chatFields       = jsonFields(reflect.TypeFor[ChatRequest]())
	messageFields    = jsonFields(reflect.TypeFor[ChatMessage]())
	streamFields     = jsonFields(reflect.TypeFor[StreamOptions]())
	partFields       = map[string]bool{"type": true, "text": true}
)

// checkKeys refuses a field of the JSON object raw that is not in known,
// naming it (prefixed by path) in a 400: unsupported_parameter for a field
// this server knows and does not implement, unknown_parameter for any other.
// A raw that is not an object passes (the typed decoding reports it).
func checkKeys(raw json.RawMessage, known map[string]bool, path string) *httpError {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if known[k] {
			continue
		}
		name := path + k
		if why, ok := unsupported[k]; ok {
			if isNeutral(k, m[k]) {
				continue
			}
			return badRequest(name, "unsupported_parameter", "%s is not supported: %s", name, why)
		}
		return badRequest(name, "unknown_parameter", "unknown parameter %s (docs/serve.md lists the parameters this server implements)", name)
	}
	return nil
}

// checkRequestKeys refuses the fields of a request body (a completion's
// when chat is false) that this server does not implement, in the request,
// its stream_options, and each chat message and content part.
func checkRequestKeys(body []byte, chat bool) *httpError {
	known := completionFields
	if chat {
		known = chatFields
	}
	if e := checkKeys(body, known, ""); e != nil {
		return e
	}
	var nested struct {
		StreamOptions json.RawMessage `json:"stream_options"`
	}
	json.Unmarshal(body, &nested) // type errors are the typed decoding's to report
	if e := checkKeys(nested.StreamOptions, streamFields, "stream_options."); e != nil {
		return e
	}
	if !chat {
		return nil
	}
	var msgs struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if json.Unmarshal(body, &msgs) != nil {
		return nil
	}
	for i, raw := range msgs.Messages {
		path := fmt.Sprintf("messages[%d].", i)
		if e := checkKeys(raw, messageFields, path); e != nil {
			return e
		}
		var m struct {
			Content []json.RawMessage `json:"content"`
		}
		if json.Unmarshal(raw, &m) != nil {
			continue // a string or null content
		}
		for j, part := range m.Content {
			if e := checkKeys(part, partFields, fmt.Sprintf("%scontent[%d].", path, j)); e != nil {
				return e
			}
		}
	}
	return nil
}
