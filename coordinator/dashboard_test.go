package coordinator

import (
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"carryon/internal/testenv"

	"github.com/prometheus/client_golang/prometheus"
)

// dashFixture is a coordinator without a swarm, its Status set by hand, a
// few training steps and two published versions (the second a boosting
// stage of the first).
type dashFixture struct {
	c      *Coordinator
	d      *Dashboard
	reg    *prometheus.Registry
	srv    *httptest.Server
	v1, v2 string
}

func newDashFixture(t *testing.T) *dashFixture {
	t.Helper()
	c, err := New(nil, nil, testBase(t), Config{CacheDir: t.TempDir(), Train: TrainConfig{Steps: 40},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.status.Store(&Status{Time: time.Now(),
		Job: JobStatus{ID: "00c0ffee", Total: 10, CachedAtStart: 3, Done: 7, Leased: 2, Pending: 1, Verifying: 1,
			Tokens: 700, BytesReceived: 12345, ComputedTokens: 800, Reassigned: 1,
			Verify: VerifyStatus{Sampled: 4, Verified: 3, Disagreements: 1, Bans: 1}},
		Nodes: []NodeStatus{
			{Peer: "12D3KooWAlice", Device: "cuda", TokensPerSec: 1500, Leases: 2, Cap: 2, Chunks: 5, Eligible: true},
			{Peer: "12D3KooWMallory", Device: "cpu", Banned: true, BanReason: `<script>alert("x")</script>`},
		}})
	reg := prometheus.NewRegistry()
	d, err := NewDashboard(c, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	h := d.Hooks(Hooks{})
	h.Collecting(3, 10)
	for i := 1; i <= 12; i++ {
		h.Step(StepInfo{Step: i, Loss: 5 - 0.25*float64(i), LR: float32(i) * 1e-4, GradNorm: 1, TokensPerSec: 1000})
	}
	h.Eval(EvalInfo{Step: 10, Loss: 2.5, BaseLoss: 3.25, Tokens: 64})
	f := &dashFixture{c: c, d: d, reg: reg, v1: testCID("dash v1"), v2: testCID("dash v2")}
	for _, r := range []VersionRecord{
		{CID: f.v1, Step: 40, BaseHash: c.base.WeightsHash, Metrics: map[string]float64{"train_loss": 2.1}, UnixMilli: 1},
		{CID: f.v2, Parent: f.v1, Step: 40, BaseHash: c.base.WeightsHash, UnixMilli: 2},
	} {
		if err := c.recordVersion(r); err != nil {
			t.Fatal(err)
		}
	}
	f.srv = httptest.NewServer(d)
	t.Cleanup(f.srv.Close)
	return f
}

// get fetches path and decodes a JSON body into v (if not nil).
func (f *dashFixture) get(t *testing.T, method, path string, v any) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, nil)
	resp, body := testenv.Fetch(t, req)
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, body)
		}
	}
	return resp, body
}

func TestDashboardStatusAPI(t *testing.T) {
	f := newDashFixture(t)
	var s DashboardStatus
	resp, _ := f.get(t, "GET", "/api/status", &s)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	j := s.Job
	if j.ID != "00c0ffee" || j.Done != 7 || j.Total != 10 || j.Left != 3 || j.Leased != 2 || j.CacheHits != 3 ||
		j.BytesReceived != 12345 || j.Verify.Bans != 1 || j.Verify.Disagreements != 1 {
		t.Errorf("job view %+v does not match the coordinator's status", j)
	}
	if s.Phase != "training" {
		t.Errorf("phase %q after training steps, want training", s.Phase)
	}
	if len(s.Nodes) != 2 || s.Nodes[0].Device != "cuda" || s.Nodes[0].TokensPerSec != 1500 || !s.Nodes[1].Banned ||
		s.Nodes[1].BanReason != `<script>alert("x")</script>` {
		t.Errorf("nodes %+v", s.Nodes)
	}
	tr := s.Training
	if tr.Step != 12 || tr.TotalSteps != 40 || tr.Loss == nil || *tr.Loss != 2 || len(tr.Steps) != 12 || tr.Steps[11].Step != 12 {
		t.Errorf("training view: step %d of %d, loss %v, %d points", tr.Step, tr.TotalSteps, tr.Loss, len(tr.Steps))
	}
	if math.Abs(tr.LR-12e-4) > 1e-9 || tr.TokensPerSec != 1000 {
		t.Errorf("lr %v, tokens/s %v", tr.LR, tr.TokensPerSec)
	}
	if tr.ValLoss == nil || *tr.ValLoss != 2.5 || *tr.ValBaseLoss != 3.25 || len(tr.Evals) != 1 {
		t.Errorf("validation: %v %v %v", tr.ValLoss, tr.ValBaseLoss, tr.Evals)
	}
	if len(s.Versions) != 2 || s.Versions[1].CID != f.v2 || s.Versions[1].Parent != f.v1 || s.Versions[1].Depth != 1 ||
		s.Versions[0].Depth != 0 || s.Versions[0].Served {
		t.Errorf("versions %+v", s.Versions)
	}
	if s.Coordinator.Base != f.c.base.WeightsHash || s.Coordinator.Codec != "q8" {
		t.Errorf("coordinator info %+v", s.Coordinator)
	}
	f.d.Finish(nil)
	f.get(t, "GET", "/api/status?job=00c0ffee", &s)
	if s.Phase != "done" {
		t.Errorf("phase %q after Finish(nil)", s.Phase)
	}
}

func TestDashboardErrors(t *testing.T) {
	f := newDashFixture(t)
	for _, tc := range []struct {
		method, path string
		code         int
		want         string // in the error message
	}{
		{"GET", "/api/jobs/deadbeef", 404, `unknown job \"deadbeef\": the current job is 00c0ffee`},
		{"GET", "/api/status?job=nope", 404, `unknown job \"nope\"`},
		{"GET", "/api/nothing", 404, `unknown API path \"/api/nothing\"`},
		{"GET", "/api/jobs/00c0ffee/x", 404, "unknown API path"},
		{"GET", "/favicon.ico", 404, `unknown path \"/favicon.ico\"`},
		{"GET", "/../../etc/passwd", 404, "unknown path"},
		{"GET", "/api/versions/notacid", 404, `unknown adaptor version \"notacid\"`},
		{"GET", "/api/versions/" + testCID("never published"), 404, "not published by this coordinator"},
		{"POST", "/api/status", 405, "method POST not allowed"},
		{"DELETE", "/", 405, "read-only"},
	} {
		var e struct {
			Error  string `json:"error"`
			Status int    `json:"status"`
		}
		resp, body := f.get(t, tc.method, tc.path, &e)
		if resp.StatusCode != tc.code || e.Status != tc.code || resp.Header.Get("Content-Type") != "application/json" ||
			!strings.Contains(string(body), tc.want) {
			t.Errorf("%s %s: %d %q %s, want %d with %q", tc.method, tc.path, resp.StatusCode,
				resp.Header.Get("Content-Type"), body, tc.code, tc.want)
		}
	}
	// The current job and a known version are found.
	var j JobView
	if resp, _ := f.get(t, "GET", "/api/jobs/00c0ffee", &j); resp.StatusCode != 200 || j.Done != 7 {
		t.Errorf("GET /api/jobs/00c0ffee: %d %+v", resp.StatusCode, j)
	}
	var v struct {
		VersionView
		Lineage []string `json:"lineage"`
	}
	if resp, _ := f.get(t, "GET", "/api/versions/"+f.v2, &v); resp.StatusCode != 200 || v.Step != 40 ||
		len(v.Lineage) != 2 || v.Lineage[0] != f.v2 || v.Lineage[1] != f.v1 {
		t.Errorf("GET /api/versions/v2: %d %+v", resp.StatusCode, v)
	}
}

func TestDashboardPageIsSelfContained(t *testing.T) {
	f := newDashFixture(t)
	resp, body := f.get(t, "GET", "/", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Fatalf("GET /: %d, headers %v", resp.StatusCode, resp.Header)
	}
	if !strings.Contains(string(body), `<script src="app.js">`) {
		t.Errorf("the page does not load app.js")
	}
	// No file may reach outside the coordinator: no scheme, no
	// protocol-relative URL, no @import.
	external := regexp.MustCompile(`(?i)[a-z][a-z0-9+.-]*://|(src|href)\s*=\s*["']?//|@import|url\(\s*["']?(https?:)?//`)
	for _, p := range []string{"/", "/app.js", "/style.css"} {
		resp, body := f.get(t, "GET", p, nil)
		if resp.StatusCode != 200 || len(body) < 100 {
			t.Errorf("GET %s: %d, %d bytes", p, resp.StatusCode, len(body))
		}
		if m := external.Find(body); m != nil {
			t.Errorf("%s refers to an external URL: %q", p, m)
		}
	}
	// The page never renders volunteer strings as HTML.
	_, js := f.get(t, "GET", "/app.js", nil)
	if regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write`).Match(js) {
		t.Errorf("app.js writes HTML from data")
	}
}

func TestCoordinatorMetrics(t *testing.T) {
	f := newDashFixture(t)
	want := testenv.MetricChecker(t, f.reg)
	want("carryon_coordinator_chunks", map[string]string{"state": "done"}, 7)
	want("carryon_coordinator_chunks", map[string]string{"state": "leased"}, 2)
	want("carryon_coordinator_chunks", map[string]string{"state": "left"}, 3)
	want("carryon_coordinator_job_chunks", nil, 10)
	want("carryon_coordinator_cache_hit_chunks", nil, 3)
	want("carryon_coordinator_bytes_received_total", nil, 12345)
	want("carryon_coordinator_computed_tokens_total", nil, 800)
	want("carryon_coordinator_leases_total", map[string]string{"kind": "reassigned"}, 1)
	want("carryon_coordinator_verifications_total", map[string]string{"event": "bans"}, 1)
	want("carryon_coordinator_nodes", map[string]string{"state": "eligible"}, 1)
	want("carryon_coordinator_nodes", map[string]string{"state": "banned"}, 1)
	want("carryon_coordinator_node_tokens_per_second", map[string]string{"peer": "12D3KooWAlice", "device": "cuda"}, 1500)
	want("carryon_coordinator_node_banned", map[string]string{"peer": "12D3KooWMallory"}, 1)
	want("carryon_coordinator_train_step", nil, 12)
	want("carryon_coordinator_train_steps", nil, 40)
	want("carryon_coordinator_train_loss", nil, 2)
	want("carryon_coordinator_train_tokens_per_second", nil, 1000)
	want("carryon_coordinator_validation_loss", map[string]string{"model": "carryon"}, 2.5)
	want("carryon_coordinator_validation_loss", map[string]string{"model": "base"}, 3.25)
	want("carryon_coordinator_adaptor_versions", nil, 2)
	want("carryon_coordinator_adaptor_latest_info", map[string]string{"cid": f.v2, "parent": f.v1}, 1)
	if got, _ := testenv.Metric(t, f.reg, "carryon_coordinator_train_learning_rate", nil); math.Abs(got-12e-4) > 1e-9 {
		t.Errorf("learning rate %v", got)
	}
	// /metrics serves the same registry in the text format.
	resp, body := f.get(t, "GET", "/metrics", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `carryon_coordinator_chunks{state="done"} 7`) ||
		!strings.Contains(string(body), "# TYPE carryon_coordinator_bytes_received_total counter") {
		t.Errorf("GET /metrics: %d\n%s", resp.StatusCode, body)
	}
	// A second collector on the same registry is refused, not duplicated.
	if err := RegisterMetrics(f.reg, f.d); err == nil {
		t.Errorf("registering the coordinator's metrics twice succeeded")
	}
}

func TestDashboardThinsLongRuns(t *testing.T) {
	f := newDashFixture(t)
	d := &Dashboard{c: f.c, stride: 1, adverts: map[string]advertSeen{}}
	const n = 5000
	sum := 0.0
	for i := 1; i <= n; i++ {
		loss := 10 / float64(i)
		sum += loss
		d.recordStep(StepInfo{Step: i, Loss: loss, LR: 1, TokensPerSec: float64(i)})
	}
	d.recordStep(StepInfo{Step: n + 1, Loss: math.NaN()}) // dropped: JSON has no NaN
	s := d.Snapshot()
	pts := s.Training.Steps
	if len(pts) > maxTrainPoints || len(pts) < maxTrainPoints/4 {
		t.Fatalf("%d points kept of %d steps", len(pts), n)
	}
	stride := s.Training.Stride
	if pts[len(pts)-1].Step != n || s.Training.Step != n {
		t.Errorf("last point at step %d, latest step %d; want %d", pts[len(pts)-1].Step, s.Training.Step, n)
	}
	// Each full point is the mean of stride consecutive steps ending at
	// its step; together they keep the run's mean loss.
	want := 0.0
	for i := pts[0].Step - stride + 1; i <= pts[0].Step; i++ {
		want += 10 / float64(i)
	}
	want /= float64(stride)
	if pts[0].Step != stride || math.Abs(pts[0].Loss-want) > 1e-9*want {
		t.Errorf("first point: step %d loss %v, want step %d loss %v", pts[0].Step, pts[0].Loss, stride, want)
	}
	total, steps := 0.0, 0
	for i, p := range pts {
		w := stride
		if i == len(pts)-1 {
			w = p.Step - pts[i-1].Step
		}
		if i > 0 && p.Step <= pts[i-1].Step {
			t.Fatalf("points out of order at %d", i)
		}
		total += p.Loss * float64(w)
		steps += w
	}
	if steps != n || math.Abs(total-sum) > 1e-9*sum {
		t.Errorf("points cover %d steps with loss sum %v; want %d and %v", steps, total, n, sum)
	}
	if _, err := json.Marshal(s); err != nil {
		t.Errorf("snapshot does not encode: %v", err)
	}
}
