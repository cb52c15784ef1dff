package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"carryon/coordinator"
	"carryon/node"
)

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", "[--coordinator http://ADDR] [--json] [--watch DURATION]", stderr)
	addr := fs.String("coordinator", "http://"+defaultDashboardAddr, "the coordinator's dashboard address (its --http flag)")
	asJSON := fs.Bool("json", false, "print the raw /api/status JSON")
	watch := fs.Duration("watch", 0, "print again every so often until interrupted (0: once)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	base := strings.TrimRight(*addr, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	for {
		body, s, err := coordinator.FetchStatus(ctx, base+"/api/status")
		if err != nil {
			return err
		}
		if *asJSON {
			stdout.Write(body)
		} else {
			coordinator.WriteStatusText(stdout, s, time.Now())
		}
		if *watch <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*watch):
		}
		fmt.Fprintln(stdout)
	}
}

// serveHTTP serves h on addr until ctx ends (or stop is called) and
// returns the address it listens on (addr may use port 0).
func serveHTTP(ctx context.Context, addr string, h http.Handler) (bound string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln) // returns http.ErrServerClosed after Shutdown
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
			<-done
		})
	}
	context.AfterFunc(ctx, stop)
	return ln.Addr().String(), stop, nil
}

// dashboard is the coordinator command's optional dashboard (--http); the
// zero value does nothing.
type dashboard struct {
	d    *coordinator.Dashboard
	stop func()
}

// processRegistry returns a new registry holding the Go runtime's and the
// process's metrics, to which a command adds its own.
func processRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// startDashboard serves c's dashboard, API and metrics (with the Go
// runtime's and the process's) on addr; an empty addr serves nothing.
func startDashboard(ctx context.Context, c *coordinator.Coordinator, addr string, stdout io.Writer) (*dashboard, error) {
	if addr == "" {
		return &dashboard{}, nil
	}
	reg := processRegistry()
	d, err := coordinator.NewDashboard(c, reg)
	if err != nil {
		return nil, err
	}
	bound, stop, err := serveHTTP(ctx, addr, d)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("--http: %w", err)
	}
	fmt.Fprintf(stdout, "dashboard on http://%s/ (metrics at /metrics)\n", bound)
	return &dashboard{d: d, stop: stop}, nil
}

func (d *dashboard) Hooks(h coordinator.Hooks) coordinator.Hooks {
	if d.d == nil {
		return h
	}
	return d.d.Hooks(h)
}

func (d *dashboard) Finish(err error) {
	if d.d != nil {
		d.d.Finish(err)
	}
}

func (d *dashboard) Close() {
	if d.d != nil {
		d.stop()
		d.d.Close()
	}
}

// serveNodeMetrics serves n's metrics (with the Go runtime's and the
// process's) at http://addr/metrics until ctx ends; an empty addr serves
// nothing.
func serveNodeMetrics(ctx context.Context, n *node.Node, addr string, stdout io.Writer) error {
	if addr == "" {
		return nil
	}
	reg := processRegistry()
	if err := node.RegisterMetrics(reg, n); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b, _ := json.Marshal(map[string]any{"error": "unknown path " + r.URL.Path + "; metrics are at /metrics", "status": 404})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		w.Write(append(b, '\n'))
	})
	bound, _, err := serveHTTP(ctx, addr, mux)
	if err != nil {
		return fmt.Errorf("--metrics: %w", err)
	}
	fmt.Fprintf(stdout, "metrics on http://%s/metrics\n", bound)
	return nil
}
