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
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"carryon/coordinator"
	"carryon/node"
)

func init() {
	register("status", "the job at a glance: ask a coordinator's dashboard (--http) for its status", runStatus)
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", "[--coordinator http://ADDR] [--json] [--watch DURATION]", stderr)
	addr := fs.String("coordinator", "http://127.0.0.1:8080", "the coordinator's dashboard address (its --http flag)")
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
		body, s, err := fetchStatus(ctx, base+"/api/status")
		if err != nil {
			return err
		}
		if *asJSON {
			stdout.Write(body)
		} else {
			printStatus(stdout, s, time.Now())
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

// fetchStatus gets and decodes a dashboard's status (at most 16 MiB).
func fetchStatus(ctx context.Context, url string) ([]byte, *coordinator.DashboardStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("is the coordinator running with --http? %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return nil, nil, fmt.Errorf("%s: %s", url, e.Error)
		}
		return nil, nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	var s coordinator.DashboardStatus
	if err := json.Unmarshal(body, &s); err != nil {
		return nil, nil, fmt.Errorf("%s: not a carryon dashboard status: %w", url, err)
	}
	return body, &s, nil
}

// printStatus writes the job at a glance.
func printStatus(w io.Writer, s *coordinator.DashboardStatus, now time.Time) {
	c, j, t := s.Coordinator, s.Job, s.Training
	fmt.Fprintf(w, "coordinator %s: %s\n", orDash(c.Peer), s.Phase)
	if s.Error != "" {
		fmt.Fprintf(w, "error: %s\n", s.Error)
	}
	fmt.Fprintf(w, "base %s (%s, dim %d), codec %s, layers %v\n", shortID(c.Base), c.BaseArch, c.BaseDim, c.Codec, c.Layers)
	if j.ID == "" {
		fmt.Fprintf(w, "job: not started\n")
	} else {
		pct := 0.0
		if j.Total > 0 {
			pct = 100 * float64(j.Done) / float64(j.Total)
		}
		fmt.Fprintf(w, "job %s: %d/%d chunks done (%.0f%%), %d leased, %d verifying, %d left; %d cache hits; %s received\n",
			j.ID, j.Done, j.Total, pct, j.Leased, j.Verifying, j.Left, j.CacheHits, humanBytes(j.BytesReceived))
		v := j.Verify
		fmt.Fprintf(w, "verification: %d sampled, %d verified, %d disagreements, %d bans; extra compute %.1f%%\n",
			v.Sampled, v.Verified, v.Disagreements, v.Bans, 100*j.ExtraComputeFraction)
	}
	eligible, banned := 0, 0
	for _, n := range s.Nodes {
		if n.Eligible {
			eligible++
		}
		if n.Banned {
			banned++
		}
	}
	fmt.Fprintf(w, "nodes: %d (%d eligible, %d banned), %d peers connected\n", len(s.Nodes), eligible, banned, c.ConnectedPeers)
	if len(s.Nodes) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tDEVICE\tTOK/S\tLEASES\tCHUNKS\tVERIFIED\tFAILS\tSTATE")
		for _, n := range s.Nodes {
			state := "seen"
			switch {
			case n.Banned:
				state = "banned: " + n.BanReason
			case n.Eligible:
				state = "eligible"
			case n.InJob:
				state = "idle"
			}
			tps := n.TokensPerSec
			if tps == 0 {
				tps = n.AdvertTokensPerSec
			}
			fmt.Fprintf(tw, "  %s\t%s\t%.0f\t%d/%d\t%d\t%d\t%d\t%s\n", shortID(n.Peer), orDash(n.Device), tps,
				n.Leases, n.Cap, n.Chunks, n.Verified, n.Failures, state)
		}
		tw.Flush()
	}
	if t.Loss == nil {
		fmt.Fprintf(w, "training: not started (%d steps planned)\n", t.TotalSteps)
	} else {
		fmt.Fprintf(w, "training: step %d/%d, loss %.4f, lr %.3g, %.0f tokens/s", t.Step, t.TotalSteps, *t.Loss, t.LR, t.TokensPerSec)
		if t.ValLoss != nil {
			fmt.Fprintf(w, "; validation %.4f (base alone %.4f)", *t.ValLoss, *t.ValBaseLoss)
		}
		fmt.Fprintln(w)
	}
	if n := len(s.Versions); n == 0 {
		fmt.Fprintf(w, "adaptor: none published\n")
	} else {
		v := s.Versions[n-1]
		age := now.Sub(time.UnixMilli(v.UnixMilli)).Round(time.Second)
		fmt.Fprintf(w, "adaptor: %s (step %d, %s, published %s ago; %d versions", v.CID, v.Step, humanBytes(int64(v.Size)), age, n)
		if v.Parent != "" {
			fmt.Fprintf(w, ", parent %s", v.Parent)
		}
		fmt.Fprintln(w, ")")
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortID(s string) string {
	if len(s) > 16 {
		return s[:8] + "…" + s[len(s)-6:]
	}
	return orDash(s)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
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

// startDashboard serves c's dashboard, API and metrics (with the Go
// runtime's and the process's) on addr; an empty addr serves nothing.
func startDashboard(ctx context.Context, c *coordinator.Coordinator, addr string, stdout io.Writer) (*dashboard, error) {
	if addr == "" {
		return &dashboard{}, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
