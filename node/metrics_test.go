package node

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"carryon/internal/testenv"
	"carryon/protocol"
	"carryon/tensor"
)

// metric returns the value of the sample name (with labels, if any) in
// reg's gathering.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := testenv.Metric(t, reg, name, labels)
	if !ok {
		t.Fatalf("no metric %s%v", name, labels)
	}
	return v
}

// TestMetrics follows a node's metrics through a job held mid-compute, its
// acknowledgement and a rejected request.
func TestMetrics(t *testing.T) {
	b := newTestBase()
	b.entered, b.gate = make(chan struct{}, 1), make(chan struct{})
	c, n := pair(t, b, Config{MaxJobs: 2, Device: "cuda:test"})
	reg := prometheus.NewRegistry()
	if err := RegisterMetrics(reg, n); err != nil {
		t.Fatal(err)
	}
	if err := RegisterMetrics(reg, n); err == nil {
		t.Fatal("a second registration of the same metrics succeeded")
	}
	if got := metric(t, reg, "carryon_node_busy_ratio", nil); got != 0 {
		t.Errorf("idle busy ratio %v", got)
	}
	if got := metric(t, reg, "carryon_node_job_slots", nil); got != 2 {
		t.Errorf("job slots %v, want 2", got)
	}
	s := open(t, c, n)
	req := request(b)
	if err := protocol.WriteFrame(s, req); err != nil {
		t.Fatal(err)
	}
	<-b.entered // one of two slots is computing
	if got := metric(t, reg, "carryon_node_busy_ratio", nil); got != 0.5 {
		t.Errorf("busy ratio %v with one of two slots computing, want 0.5", got)
	}
	close(b.gate)
	if err := collect(s, req); err != nil {
		t.Fatal(err)
	}
	waitLogged(t, n, "chunk finished", 1)

	bad := open(t, c, n) // a request for a base the node does not serve
	r := request(b)
	r.BaseHash = strings.Repeat("0", 64)
	if err := protocol.WriteFrame(bad, r); err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, bad)
	waitLogged(t, n, "chunk not delivered", 1)

	codec, _ := tensor.ParseCodec("q8")
	st := n.Stats()
	want := testenv.MetricChecker(t, reg)
	want("carryon_node_jobs_total", nil, 1)
	want("carryon_node_chunks_rejected_total", nil, 1)
	want("carryon_node_tokens_total", nil, 8)
	want("carryon_node_bytes_sent_total", nil, float64(2*codec.EncodedSize(8, b.info.Dim)))
	want("carryon_node_tokens_per_second", nil, st.TokensPerSec)
	want("carryon_node_busy_ratio", nil, 0)
	want("carryon_node_queued_jobs", nil, 0)
	want("carryon_node_info", map[string]string{"device": "cuda:test"}, 1)
	want("carryon_node_base_info", map[string]string{"name": "test", "weights_hash": b.info.WeightsHash}, 1)
	if st.TokensPerSec <= 0 {
		t.Errorf("tokens per second %v after a job", st.TokensPerSec)
	}
	// The exposition format a scraper reads.
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{"# TYPE carryon_node_tokens_total counter", "carryon_node_tokens_total 8",
		"# TYPE carryon_node_busy_ratio gauge", `carryon_node_info{device="cuda:test"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
}
