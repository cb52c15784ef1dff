package serve

// A load generator for an OpenAI-style completions endpoint (this server's
// or another's): concurrent clients, each sending its requests one after
// another, with latency percentiles and the tokens per second of the whole.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sync"
	"time"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/model"
	"carryon/tokenizer"
)

// LoadConfig configures Load.
type LoadConfig struct {
	// URL is the server's base URL (http://host:port); requests go to
	// URL/v1/completions. Required.
	URL string
	// Model is the request's model; "" means "base".
	Model string
	// Prompts are sent in turn (request i gets Prompts[i mod len]). Required.
	Prompts []string
	// Clients send at once; 0 means 8.
	Clients int
	// Requests is the total over all clients; 0 means 4·Clients.
	Requests int
	// MaxTokens per request; 0 means 32. Requests are greedy
	// (temperature 0) and set no stop, so that each runs to MaxTokens
	// unless the model ends it.
	MaxTokens int
	// Client is the HTTP client; nil means http.DefaultClient.
	Client *http.Client
}

// LoadResult is what Load measured.
type LoadResult struct {
	Requests     int           `json:"requests"`
	Clients      int           `json:"clients"`
	Tokens       int           `json:"completion_tokens"` // usage.completion_tokens, summed
	PromptTokens int           `json:"prompt_tokens"`
	Wall         time.Duration `json:"wall_ns"`
	TokensPerSec float64       `json:"tokens_per_s"` // Tokens / Wall
	P50, P90     time.Duration `json:"-"`
	P99, Max     time.Duration `json:"-"`
	P50MS        float64       `json:"p50_ms"` // request latency, queueing included
	P99MS        float64       `json:"p99_ms"`
	MaxMS        float64       `json:"max_ms"`
}

// Load runs cfg's requests against a server and measures them. Any
// request that does not succeed makes it fail.
func Load(ctx context.Context, cfg LoadConfig) (LoadResult, error) {
	if cfg.URL == "" || len(cfg.Prompts) == 0 {
		return LoadResult{}, errors.New("serve.Load: URL and Prompts are required")
	}
	cfg.Model = cmp.Or(cfg.Model, BaseModel)
	if cfg.Clients <= 0 {
		cfg.Clients = 8
	}
	if cfg.Requests <= 0 {
		cfg.Requests = 4 * cfg.Clients
	}
	if cfg.MaxTokens <= 0 {
		cfg.MaxTokens = 32
	}
	cfg.Client = cmp.Or(cfg.Client, http.DefaultClient)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu        sync.Mutex
		lat       []time.Duration
		tokens    int
		promptTok int
		firstErr  error
		next      int
		wg        sync.WaitGroup
	)
	one := func(i int) error {
		body, _ := json.Marshal(map[string]any{"model": cfg.Model, "prompt": cfg.Prompts[i%len(cfg.Prompts)],
			"max_tokens": cfg.MaxTokens, "temperature": 0})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.URL+"/v1/completions", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		t0 := time.Now()
		resp, err := cfg.Client.Do(req)
		if err != nil {
			return err
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		d := time.Since(t0)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("request %d: status %d: %s", i, resp.StatusCode, bytes.TrimSpace(data))
		}
		var r CompletionResponse
		if err := json.Unmarshal(data, &r); err != nil || r.Usage == nil {
			return fmt.Errorf("request %d: an answer without usage: %.200s", i, data)
		}
		mu.Lock()
		lat = append(lat, d)
		tokens += r.Usage.CompletionTokens
		promptTok += r.Usage.PromptTokens
		mu.Unlock()
		return nil
	}
	start := time.Now()
	for range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := i >= cfg.Requests || firstErr != nil
				mu.Unlock()
				if stop {
					return
				}
				if err := one(i); err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	if firstErr != nil {
		return LoadResult{}, fmt.Errorf("serve.Load: %w", firstErr)
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { // nearest rank
		return lat[max(0, int(math.Ceil(p*float64(len(lat))))-1)]
	}
	res := LoadResult{Requests: len(lat), Clients: cfg.Clients, Tokens: tokens, PromptTokens: promptTok, Wall: wall,
		TokensPerSec: float64(tokens) / wall.Seconds(), P50: pct(0.50), P90: pct(0.90), P99: pct(0.99), Max: lat[len(lat)-1]}
	res.P50MS, res.P99MS, res.MaxMS = ms(res.P50), ms(res.P99), ms(res.Max)
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Direct is the rival Load is measured against: the same greedy
// generations (BOS and the prompt's tokens, MaxTokens new tokens, the
// tokenizer's EOS ending one early) run one after another in-process by
// carryon.GenerateIDs, without HTTP, queue or concurrency. It returns the
// tokens generated and the time taken.
func Direct(ctx context.Context, b *model.Base, tok tokenizer.Tokenizer, prompts []string, requests, maxTokens int) (int, time.Duration, error) {
	start, n := time.Now(), 0
	for i := range requests {
		var ids []int32
		if bos := tok.BOS(); bos >= 0 {
			ids = append(ids, bos)
		}
		ids = append(ids, tok.Encode(prompts[i%len(prompts)])...)
		var stop []int32
		if eos := tok.EOS(); eos >= 0 {
			stop = []int32{eos}
		}
		out, _, err := carryon.GenerateIDs(b, nil, 0, ids, carryon.GenerateOptions{MaxTokens: maxTokens, Stop: stop,
			OnToken: func(int32) bool { return ctx.Err() == nil }})
		if err != nil {
			return 0, 0, fmt.Errorf("serve.Direct: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		n += len(out)
	}
	return n, time.Since(start), nil
}

// BenchPrompts are the prompts of `carryon bench serve`: short questions
// of the kind the demo trains on, in the training template
// (dataset.Prompt), and a few plain continuations.
var BenchPrompts = []string{
	dataset.Prompt("Tom has 3 apples and buys 5 more. How many apples does he have?"),
	dataset.Prompt("A train travels 60 km in one hour. How far does it go in 4 hours?"),
	dataset.Prompt("What is 12 times 7?"),
	dataset.Prompt("Anna reads 15 pages a day. How many pages does she read in a week?"),
	"Once upon a time, in a small village by the sea,",
	"The three most important ideas in computer science are",
	dataset.Prompt("If a shirt costs $20 and is 25% off, what does it cost?"),
	"Write a short poem about the moon.\n",
}
