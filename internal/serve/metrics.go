package serve

// Prometheus metrics of the server (GET /metrics) and the status of GET
// /health.

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// rateWindow is the span carryon_serve_tokens_per_second averages over.
const rateWindow = 60

// metrics are the server's collectors, on a registry of their own.
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec   // by endpoint and status code
	latency   *prometheus.HistogramVec // by endpoint
	firstTok  prometheus.Histogram     // time to first token
	prompt    prometheus.Counter
	generated prometheus.Counter

	mu      sync.Mutex
	buckets [rateWindow]int64 // tokens generated per second, by unix second mod rateWindow
	stamps  [rateWindow]int64 // the unix second each bucket counts
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "carryon_serve_requests_total",
		Help: "HTTP requests answered, by endpoint and status code."}, []string{"endpoint", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "carryon_serve_request_duration_seconds",
		Help:    "Time from a request's arrival to the end of its answer (queueing included), by endpoint.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)}, []string{"endpoint"})
	m.firstTok = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "carryon_serve_time_to_first_token_seconds",
		Help:    "Time from a generation request's arrival to its first sampled token (queueing and prefill included).",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)})
	m.prompt = prometheus.NewCounter(prometheus.CounterOpts{Name: "carryon_serve_prompt_tokens_total",
		Help: "Prompt tokens of the generations run (BOS and chat template included)."})
	m.generated = prometheus.NewCounter(prometheus.CounterOpts{Name: "carryon_serve_generated_tokens_total",
		Help: "Tokens sampled, all requests together."})
	rate := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "carryon_serve_tokens_per_second",
		Help: "Tokens sampled per second, all requests together, averaged over the last minute."}, m.rate)
	queue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "carryon_serve_queue_depth",
		Help: "Requests waiting for a worker."}, func() float64 { return float64(s.sched.queued.Load()) })
	running := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "carryon_serve_running",
		Help: "Generations running now."}, func() float64 { return float64(s.sched.running.Load()) })
	workers := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "carryon_serve_workers",
		Help: "Generations that may run at once (--workers)."}, func() float64 { return float64(s.cfg.Workers) })
	maxQueue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "carryon_serve_queue_capacity",
		Help: "Requests that may wait before more get 503 (--queue)."}, func() float64 { return float64(s.cfg.MaxQueue) })
	models := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "carryon_serve_models",
		Help: "Models served: the base and the loaded adaptors."}, func() float64 { return float64(len(s.Models())) })
	m.reg.MustRegister(m.requests, m.latency, m.firstTok, m.prompt, m.generated, rate, queue, running, workers, maxQueue, models)
	return m
}

// token counts one sampled token.
func (m *metrics) token() {
	m.generated.Inc()
	now := time.Now().Unix()
	m.mu.Lock()
	i := now % rateWindow
	if m.stamps[i] != now {
		m.stamps[i], m.buckets[i] = now, 0
	}
	m.buckets[i]++
	m.mu.Unlock()
}

// rate returns the tokens per second over the last rateWindow seconds.
func (m *metrics) rate() float64 {
	now := time.Now().Unix()
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for i, st := range m.stamps {
		if st > now-rateWindow && st <= now {
			n += m.buckets[i]
		}
	}
	return float64(n) / rateWindow
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// statusWriter records the status code a handler answers.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the flusher.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// observe runs h and counts its request under endpoint.
func (m *metrics) observe(endpoint string, w http.ResponseWriter, r *http.Request, h http.Handler) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	h.ServeHTTP(sw, r)
	code := sw.code
	if code == 0 {
		code = 499 // the client went away before any answer
	}
	m.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
}

// Health is the body of GET /health.
type Health struct {
	Status  string `json:"status"` // "ok", or "loading" before the server is ready
	Models  int    `json:"models,omitempty"`
	Workers int    `json:"workers,omitempty"`
	Running int64  `json:"running"`
	Queued  int64  `json:"queued"`
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Health{Status: "ok", Models: len(s.Models()), Workers: s.cfg.Workers,
		Running: s.sched.running.Load(), Queued: s.sched.queued.Load()})
}

// Gate answers every request with 503 until Open hands it the real
// handler: the listener can be bound (and a port in use reported) before
// the model loads, and GET /health says "loading" meanwhile, as llama.cpp's
// server does.
type Gate struct {
	mu sync.RWMutex
	h  http.Handler
}

// Open makes the gate pass every request to h from now on.
func (g *Gate) Open(h http.Handler) {
	g.mu.Lock()
	g.h = h
	g.mu.Unlock()
}

// ServeHTTP passes r on once the gate is open, else answers 503.
func (g *Gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.RLock()
	h := g.h
	g.mu.RUnlock()
	if h != nil {
		h.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Retry-After", "5")
	if r.URL.Path == "/health" {
		writeJSON(w, http.StatusServiceUnavailable, Health{Status: "loading"})
		return
	}
	writeError(w, &httpError{status: http.StatusServiceUnavailable, typ: "server_error", code: "loading",
		msg: "the server is loading its model: try again shortly (GET /health says when it is ready)"})
}
