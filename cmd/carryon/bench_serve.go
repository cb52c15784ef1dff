package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"carryon/internal/serve"
	"carryon/model"
)

// benchServeResult is `carryon bench serve`'s line of JSON.
type benchServeResult struct {
	serve.LoadResult
	Model          string  `json:"model"`
	Workers        int     `json:"workers,omitempty"`
	MaxTokens      int     `json:"max_tokens"`
	DirectTokPerS  float64 `json:"direct_tokens_per_s,omitempty"` // the rival: serve.Direct
	RatioVsDirect  float64 `json:"served_over_direct,omitempty"`  // tokens_per_s / direct_tokens_per_s
	ExternalServer string  `json:"external_server_url,omitempty"` // --url
}

// benchServe measures an OpenAI-style server under concurrent clients: this
// one, started in-process on a loopback port (with the same generations run
// directly, without HTTP, as the rival), or any other with --url.
func benchServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench", "serve [--model PATH|default] [--clients 8] [--requests 32] [--max-tokens 32] [--workers 2] [--url URL]", stderr)
	modelFlag := addModelFlag(fs)
	clients := fs.Int("clients", 8, "clients sending at once")
	requests := fs.Int("requests", 32, "requests in all")
	maxTokens := fs.Int("max-tokens", 32, "max_tokens of each (greedy) request")
	workers := fs.Int("workers", 2, "the server's --workers (ignored with --url)")
	url := fs.String("url", "", "measure this server (http://HOST:PORT, /v1/completions) instead of starting one (--model and --workers are then ignored); no rival then")
	modelName := fs.String("request-model", "base", "the requests' model field")
	direct := fs.Bool("direct", true, "also run the rival: the same generations one after another in-process, without HTTP")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *clients < 1 || *requests < 1 || *maxTokens < 1 || *workers < 1 {
		return errors.New("--clients, --requests, --max-tokens and --workers must be >= 1")
	}
	res := benchServeResult{Model: *modelFlag, MaxTokens: *maxTokens}
	target := *url
	if target == "" {
		m, err := model.Open(*modelFlag, model.OpenOptions{})
		if err != nil {
			return err
		}
		base, tok, name := m.Base, m.Tokenizer, m.Name
		defer base.Close()
		res.Model, res.Workers = name, *workers
		srv, err := serve.New(serve.Config{Base: base, Tokenizer: tok, Workers: *workers, MaxQueue: *requests, MaxTokens: *maxTokens})
		if err != nil {
			return err
		}
		defer srv.Close()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(ln)
		defer hs.Close()
		target = "http://" + ln.Addr().String()
		if *direct {
			n, d, err := serve.Direct(ctx, base, tok, serve.BenchPrompts, *requests, *maxTokens)
			if err != nil {
				return err
			}
			res.DirectTokPerS = float64(n) / d.Seconds()
		}
	} else {
		res.ExternalServer, res.Model = target, *modelName
	}
	lr, err := serve.Load(ctx, serve.LoadConfig{URL: target, Model: *modelName, Prompts: serve.BenchPrompts,
		Clients: *clients, Requests: *requests, MaxTokens: *maxTokens})
	if err != nil {
		return err
	}
	res.LoadResult = lr
	if res.DirectTokPerS > 0 {
		res.RatioVsDirect = lr.TokensPerSec / res.DirectTokPerS
	}
	fmt.Fprintf(stderr, "%d requests from %d clients: %d tokens in %.2f s = %.1f tokens/s; latency p50 %.0f ms, p99 %.0f ms, max %.0f ms\n",
		lr.Requests, lr.Clients, lr.Tokens, lr.Wall.Seconds(), lr.TokensPerSec, lr.P50MS, lr.P99MS, lr.MaxMS)
	if res.DirectTokPerS > 0 {
		fmt.Fprintf(stderr, "rival (the same generations in-process, one after another): %.1f tokens/s; served/direct = %.2f\n", res.DirectTokPerS, res.RatioVsDirect)
	}
	return json.NewEncoder(stdout).Encode(res)
}
