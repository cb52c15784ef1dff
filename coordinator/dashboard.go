package coordinator

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"carryon/protocol"
)

// What a team sees: the dashboard serves, on one HTTP handler,
//
//	GET /                   the page (web/index.html, app.js, style.css,
//	                        embedded; it polls /api/status and draws the
//	                        curves itself: no external URL at all)
//	GET /api/status         DashboardStatus as JSON (?job=ID: 404 unless
//	                        ID is the current job)
//	GET /api/jobs/{id}      the job's JobView, 404 for an unknown job
//	GET /api/versions       the published adaptor versions, oldest first
//	GET /api/versions/{cid} one version and its lineage, 404 if unknown
//	GET /metrics            Prometheus exposition of the registry given
//	                        to NewDashboard
//
// Anything else is a 404 (405 for a method other than GET or HEAD) with a
// JSON body {"error": "..."}.

//go:embed web/index.html web/app.js web/style.css
var webFiles embed.FS

// maxTrainPoints caps the training steps a dashboard keeps; beyond it the
// history is thinned by averaging neighbouring pairs.
const maxTrainPoints = 1024

// Dashboard tracks a coordinator for people: the swarm (from the
// scheduler's Status and the nodes' adverts), the job, the training curves
// (through Hooks) and the published versions. It is an http.Handler.
type Dashboard struct {
	c    *Coordinator
	mux  *http.ServeMux
	gath prometheus.Gatherer

	stopAdverts context.CancelFunc
	advertsDone chan struct{}

	mu       sync.Mutex
	phase    string
	err      string
	started  time.Time
	steps    []TrainPoint
	stride   int // steps folded into each kept point
	pend     []TrainPoint
	evals    []EvalPoint
	resumed  int
	last     TrainPoint
	adverts  map[string]advertSeen
	maxSteps int
}

type advertSeen struct {
	a    *protocol.Advert
	seen time.Time
}

// NewDashboard builds the dashboard of c and registers c's Prometheus
// collector (see metrics.go) on reg, which /metrics then serves; a nil reg
// means a fresh registry. When c has swarm topics, the dashboard listens to
// the nodes' adverts (for their bases and codecs) until Close.
func NewDashboard(c *Coordinator, reg *prometheus.Registry) (*Dashboard, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	d := &Dashboard{c: c, gath: reg, phase: "idle", started: time.Now(), stride: 1,
		adverts: map[string]advertSeen{}, maxSteps: c.cfg.Train.Steps}
	if err := RegisterMetrics(reg, d); err != nil {
		return nil, fmt.Errorf("coordinator.NewDashboard: %w", err)
	}
	d.routes()
	if c.topics != nil && c.h != nil {
		sub, err := c.topics.Nodes.Subscribe()
		if err != nil {
			return nil, fmt.Errorf("coordinator.NewDashboard: subscribe: %w", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		d.stopAdverts, d.advertsDone = cancel, make(chan struct{})
		in := make(chan *protocol.Advert, 16)
		go func() {
			defer sub.Cancel()
			readAdverts(ctx, sub, c.h.ID(), in)
		}()
		go func() {
			defer close(d.advertsDone)
			for {
				select {
				case <-ctx.Done():
					return
				case a := <-in:
					d.mu.Lock()
					d.adverts[a.Peer] = advertSeen{a: a, seen: time.Now()}
					d.mu.Unlock()
				}
			}
		}()
	}
	return d, nil
}

// Close stops listening to adverts. The handler keeps answering.
func (d *Dashboard) Close() error {
	if d.stopAdverts != nil {
		d.stopAdverts()
		<-d.advertsDone
		d.stopAdverts = nil
	}
	return nil
}

// Hooks returns next with the dashboard's recording added: each hook of
// next (any may be nil) is called after the dashboard has taken note.
func (d *Dashboard) Hooks(next Hooks) Hooks {
	h := next
	h.Collecting = func(cached, total int) {
		d.setPhase("collecting")
		if next.Collecting != nil {
			next.Collecting(cached, total)
		}
	}
	h.Progress = func(p Progress) {
		d.setPhase("collecting")
		if next.Progress != nil {
			next.Progress(p)
		}
	}
	h.Resumed = func(step int) {
		d.mu.Lock()
		d.phase, d.resumed = "training", step
		d.mu.Unlock()
		if next.Resumed != nil {
			next.Resumed(step)
		}
	}
	h.Step = func(s StepInfo) {
		d.recordStep(s)
		if next.Step != nil {
			next.Step(s)
		}
	}
	h.Eval = func(e EvalInfo) {
		d.recordEval(e)
		if next.Eval != nil {
			next.Eval(e)
		}
	}
	return h
}

// Finish marks the job over: "done", or "failed" with err.
func (d *Dashboard) Finish(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.phase, d.err = "failed", err.Error()
		return
	}
	d.phase, d.err = "done", ""
}

func (d *Dashboard) setPhase(p string) {
	d.mu.Lock()
	d.phase = p
	d.mu.Unlock()
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// recordStep keeps a step (JSON has no NaN: a non-finite value is dropped).
func (d *Dashboard) recordStep(s StepInfo) {
	p := TrainPoint{Step: s.Step, Loss: s.Loss, LR: float64(s.LR), GradNorm: s.GradNorm, TokensPerSec: s.TokensPerSec}
	if !finite(p.Loss) || !finite(p.LR) || !finite(p.GradNorm) || !finite(p.TokensPerSec) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.phase, d.last = "training", p
	d.pend = append(d.pend, p)
	if len(d.pend) < d.stride {
		return
	}
	d.steps = append(d.steps, meanPoint(d.pend))
	d.pend = d.pend[:0]
	if len(d.steps) >= maxTrainPoints { // thin: average neighbouring pairs
		thin := d.steps[:0]
		for i := 0; i+1 < len(d.steps); i += 2 {
			thin = append(thin, meanPoint(d.steps[i:i+2]))
		}
		d.steps, d.stride = thin, 2*d.stride
	}
}

// meanPoint averages ps, labelled with the last step.
func meanPoint(ps []TrainPoint) TrainPoint {
	var m TrainPoint
	for _, p := range ps {
		m.Loss += p.Loss
		m.LR += p.LR
		m.GradNorm += p.GradNorm
		m.TokensPerSec += p.TokensPerSec
	}
	n := float64(len(ps))
	m.Loss, m.LR, m.GradNorm, m.TokensPerSec = m.Loss/n, m.LR/n, m.GradNorm/n, m.TokensPerSec/n
	m.Step = ps[len(ps)-1].Step
	return m
}

func (d *Dashboard) recordEval(e EvalInfo) {
	if !finite(e.Loss) || !finite(e.BaseLoss) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.evals = append(d.evals, EvalPoint{Step: e.Step, Loss: e.Loss, BaseLoss: e.BaseLoss, Tokens: e.Tokens})
}

// DashboardStatus is the dashboard's view of everything (/api/status).
type DashboardStatus struct {
	Time        time.Time       `json:"time"`
	Phase       string          `json:"phase"` // idle, collecting, training, done, failed
	Error       string          `json:"error,omitempty"`
	Coordinator CoordinatorInfo `json:"coordinator"`
	Job         JobView         `json:"job"`
	Nodes       []NodeView      `json:"nodes"`
	Training    TrainingView    `json:"training"`
	Versions    []VersionView   `json:"versions"`
	VersionsErr string          `json:"versions_error,omitempty"`
}

// CoordinatorInfo describes the coordinator and its job's settings.
type CoordinatorInfo struct {
	Peer           string  `json:"peer,omitempty"`
	ConnectedPeers int     `json:"connected_peers"`
	Base           string  `json:"base"` // weights hash
	BaseArch       string  `json:"base_arch"`
	BaseDim        int     `json:"base_dim"`
	Codec          string  `json:"codec"`
	Layers         []int   `json:"layers"`
	VerifyFraction float64 `json:"verify_fraction"`
	Uptime         float64 `json:"uptime_seconds"`
}

// JobView is one Collect (see JobStatus).
type JobView struct {
	ID                   string     `json:"id"`
	Total                int        `json:"chunks_total"`
	Done                 int        `json:"chunks_done"`
	Leased               int        `json:"chunks_leased"`
	Pending              int        `json:"chunks_pending"`
	Verifying            int        `json:"chunks_verifying"`
	Left                 int        `json:"chunks_left"`        // total - done
	CacheHits            int        `json:"cache_hits"`         // chunks cached when the job began
	Tokens               int64      `json:"tokens"`             // of the chunks done in this Collect
	ComputedTokens       int64      `json:"computed_tokens"`    // of every result received
	BytesReceived        int64      `json:"bytes_received"`     // bridged payload bytes on the wire
	Speculative          int        `json:"speculative_leases"` // duplicate leases for the tail
	Reassigned           int        `json:"reassigned_leases"`
	Finished             bool       `json:"finished"`
	ExtraComputeFraction float64    `json:"extra_compute_fraction"`
	Verify               VerifyView `json:"verify"`
	Data                 DataView   `json:"data"`
}

// DataView says what reading the job's data file did to its records
// (dataset.Report): nothing is dropped or cut without being counted here.
type DataView struct {
	Format  string         `json:"format,omitempty"` // "jsonl" or "text"; empty before a job
	Read    int            `json:"records_read"`
	Used    int            `json:"records_used"`    // gave at least one trained token
	Cut     int            `json:"records_cut"`     // shortened to the sequence length (counted in used too)
	Dropped int            `json:"records_dropped"` // nothing left to train on (malformed, empty, no answer)
	Why     map[string]int `json:"reasons,omitempty"`
}

// VerifyView counts the verification of volunteers' work (VerifyStatus).
type VerifyView struct {
	Sampled       int `json:"sampled"`
	Verified      int `json:"verified"`
	Disagreements int `json:"disagreements"`
	Bans          int `json:"bans"`
	Dropped       int `json:"dropped"`
}

// BaseView is a base a node advertises.
type BaseView struct {
	Name string `json:"name"`
	Hash string `json:"hash"` // weights hash
	Arch string `json:"arch"`
	Dim  int    `json:"dim"`
}

// NodeView is one node: the scheduler's record merged with its advert.
type NodeView struct {
	Peer               string     `json:"peer"`
	Device             string     `json:"device"`
	Bases              []BaseView `json:"bases,omitempty"`
	Codecs             []string   `json:"codecs,omitempty"`
	FreeSlots          int        `json:"free_slots"`
	LastAdvert         *time.Time `json:"last_advert,omitempty"`
	InJob              bool       `json:"in_job"` // the scheduler knows it
	TokensPerSec       float64    `json:"tokens_per_sec"`
	AdvertTokensPerSec float64    `json:"advert_tokens_per_sec"`
	Leases             int        `json:"leases"`
	Cap                int        `json:"lease_cap"`
	Chunks             int        `json:"chunks"`
	Opinions           int        `json:"opinions"`
	Verified           int        `json:"verified"`
	Failures           int        `json:"failures"`
	SamplingRate       float64    `json:"sampling_rate"`
	Clean              int        `json:"clean"`   // verified results in a row (trust, kept across restarts)
	Suspect            bool       `json:"suspect"` // lost or could not settle a comparison
	Eligible           bool       `json:"eligible"`
	Banned             bool       `json:"banned"`
	BanReason          string     `json:"ban_reason,omitempty"`
}

// TrainingView is the training run's latest numbers and curves.
type TrainingView struct {
	Step         int          `json:"step"`
	TotalSteps   int          `json:"total_steps"`
	ResumedFrom  int          `json:"resumed_from"`
	Loss         *float64     `json:"loss"` // latest step's; null before the first
	LR           float64      `json:"lr"`
	GradNorm     float64      `json:"grad_norm"`
	TokensPerSec float64      `json:"tokens_per_sec"`
	ValLoss      *float64     `json:"val_loss"` // latest validation pass's
	ValBaseLoss  *float64     `json:"val_base_loss"`
	Stride       int          `json:"stride"` // steps averaged into each point of Steps
	Steps        []TrainPoint `json:"steps"`
	Evals        []EvalPoint  `json:"evals"`
}

// TrainPoint is one optimiser step (or the mean of Stride of them).
type TrainPoint struct {
	Step         int     `json:"step"`
	Loss         float64 `json:"loss"`
	LR           float64 `json:"lr"`
	GradNorm     float64 `json:"grad_norm"`
	TokensPerSec float64 `json:"tokens_per_sec"`
}

// EvalPoint is one validation pass.
type EvalPoint struct {
	Step     int     `json:"step"`
	Loss     float64 `json:"loss"`
	BaseLoss float64 `json:"base_loss"`
	Tokens   int     `json:"tokens"`
}

// VersionView is a published adaptor version.
type VersionView struct {
	VersionRecord
	Served bool `json:"served"` // in the store, so peers can fetch it
	Depth  int  `json:"depth"`  // boosting stages above the root (0: no known parent)
}

// Snapshot assembles the dashboard's view now.
func (d *Dashboard) Snapshot() DashboardStatus {
	st := d.c.Status()
	now := time.Now()
	s := DashboardStatus{Time: now, Nodes: []NodeView{}, Versions: []VersionView{}}
	cfg := d.c.cfg
	s.Coordinator = CoordinatorInfo{Base: d.c.base.EmbedHash(), BaseArch: d.c.base.Config.Arch, BaseDim: d.c.base.Config.Dim,
		Codec: d.c.codec.String(), Layers: cfg.Layers, VerifyFraction: max(cfg.VerifyFraction, 0),
		Uptime: now.Sub(d.started).Seconds()}
	if d.c.h != nil {
		s.Coordinator.Peer = d.c.h.ID().String()
		s.Coordinator.ConnectedPeers = len(d.c.h.Network().Peers())
	}
	j := st.Job
	s.Job = JobView{ID: j.ID, Total: j.Total, Done: j.Done, Leased: j.Leased, Pending: j.Pending, Verifying: j.Verifying,
		Left: j.Total - j.Done, CacheHits: j.CachedAtStart, Tokens: j.Tokens, ComputedTokens: j.ComputedTokens,
		BytesReceived: j.BytesReceived, Speculative: j.Speculative, Reassigned: j.Reassigned, Finished: j.Finished,
		ExtraComputeFraction: j.ExtraComputeFraction, Verify: VerifyView(j.Verify),
		Data: DataView{Format: j.Data.Format, Read: j.Data.Read, Used: j.Data.Used, Cut: j.Data.Cut, Dropped: j.Data.Dropped,
			Why: j.Data.Why}}

	d.mu.Lock()
	s.Phase, s.Error = d.phase, d.err
	byPeer := map[string]*NodeView{}
	for _, n := range st.Nodes {
		v := &NodeView{Peer: n.Peer, Device: n.Device, InJob: true, TokensPerSec: n.TokensPerSec,
			AdvertTokensPerSec: n.AdvertTokensPerSec, Leases: n.Leases, Cap: n.Cap, Chunks: n.Chunks,
			Opinions: n.Opinions, Verified: n.Verified, Failures: n.Failures, SamplingRate: n.SamplingRate,
			Clean: n.Clean, Suspect: n.Suspect, Eligible: n.Eligible, Banned: n.Banned, BanReason: n.BanReason}
		byPeer[n.Peer] = v
	}
	ttl := max(cfg.NodeTTL, 3*time.Second)
	for p, a := range d.adverts {
		v, ok := byPeer[p]
		if !ok {
			if now.Sub(a.seen) > ttl { // gone, and never in a job
				continue
			}
			v = &NodeView{Peer: p, Device: a.a.Device, AdvertTokensPerSec: a.a.TokensPerSec}
			byPeer[p] = v
		}
		seen := a.seen
		v.Bases, v.FreeSlots, v.LastAdvert = nil, a.a.FreeSlots, &seen
		for _, b := range a.a.Bases {
			v.Bases = append(v.Bases, BaseView{Name: b.Name, Hash: b.WeightsHash, Arch: b.Arch, Dim: b.Dim})
		}
		v.Codecs = slices.Sorted(slices.Values(a.a.Codecs))
		if v.Device == "" {
			v.Device = a.a.Device
		}
	}
	tv := TrainingView{Step: max(d.last.Step, d.resumed), TotalSteps: d.maxSteps, ResumedFrom: d.resumed, LR: d.last.LR,
		GradNorm: d.last.GradNorm, TokensPerSec: d.last.TokensPerSec, Stride: d.stride,
		Steps: append(append([]TrainPoint{}, d.steps...), d.pendingPoint()...), Evals: append([]EvalPoint{}, d.evals...)}
	if d.last.Step > 0 {
		l := d.last.Loss
		tv.Loss = &l
	}
	if n := len(d.evals); n > 0 {
		l, b := d.evals[n-1].Loss, d.evals[n-1].BaseLoss
		tv.ValLoss, tv.ValBaseLoss = &l, &b
	}
	d.mu.Unlock()
	s.Training = tv
	for _, v := range byPeer {
		s.Nodes = append(s.Nodes, *v)
	}
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].Peer < s.Nodes[j].Peer })

	vs, err := d.versions()
	if err != nil {
		s.VersionsErr = err.Error()
	}
	s.Versions = vs
	return s
}

// pendingPoint is the mean of the steps not yet folded into a kept point.
func (d *Dashboard) pendingPoint() []TrainPoint {
	if len(d.pend) == 0 {
		return nil
	}
	return []TrainPoint{meanPoint(d.pend)}
}

// versions lists the published versions with their lineage depth.
func (d *Dashboard) versions() ([]VersionView, error) {
	recs, stored, err := d.c.Versions()
	if err != nil {
		return []VersionView{}, err
	}
	parent := map[string]string{}
	for _, r := range recs {
		parent[r.CID] = r.Parent
	}
	out := make([]VersionView, len(recs))
	for i, r := range recs {
		out[i] = VersionView{VersionRecord: r, Served: stored[i], Depth: len(lineage(parent, r.CID)) - 1}
	}
	return out, nil
}

// lineage is cid followed by its ancestors, as far as the log knows them
// (a parent outside the log ends the chain; so does a cycle).
func lineage(parent map[string]string, id string) []string {
	chain := []string{id}
	seen := map[string]bool{id: true}
	for p := parent[id]; p != "" && !seen[p]; p = parent[p] {
		chain = append(chain, p)
		seen[p] = true
		if _, known := parent[p]; !known {
			break
		}
	}
	return chain
}

// ServeHTTP serves the page, the API and /metrics.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSONError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; the dashboard is read-only", r.Method))
		return
	}
	d.mux.ServeHTTP(w, r)
}

func (d *Dashboard) routes() {
	m := http.NewServeMux()
	for _, f := range []struct{ path, file, ctype string }{
		{"/{$}", "web/index.html", "text/html; charset=utf-8"},
		{"/index.html", "web/index.html", "text/html; charset=utf-8"},
		{"/app.js", "web/app.js", "text/javascript; charset=utf-8"},
		{"/style.css", "web/style.css", "text/css; charset=utf-8"},
	} {
		body, err := webFiles.ReadFile(f.file)
		if err != nil {
			panic("coordinator: embedded " + f.file + " missing: " + err.Error()) // a build defect
		}
		m.HandleFunc(f.path, func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Content-Type", f.ctype)
			// No external URL may load: everything comes from here.
			h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'")
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Cache-Control", "no-cache")
			w.Write(body)
		})
	}
	m.HandleFunc("/api/status", func(w http.ResponseWriter, r *http.Request) {
		s := d.Snapshot()
		if job := r.URL.Query().Get("job"); job != "" && job != s.Job.ID {
			writeJSONError(w, http.StatusNotFound, unknownJob(job, s.Job.ID))
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	m.HandleFunc("/api/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		s := d.Snapshot()
		if id := r.PathValue("id"); id != s.Job.ID || id == "" {
			writeJSONError(w, http.StatusNotFound, unknownJob(id, s.Job.ID))
			return
		}
		writeJSON(w, http.StatusOK, s.Job)
	})
	m.HandleFunc("/api/versions", func(w http.ResponseWriter, r *http.Request) {
		vs, err := d.versions()
		if err != nil {
			writeJSONError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, vs)
	})
	m.HandleFunc("/api/versions/{cid}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("cid")
		if _, err := cid.Decode(id); err != nil {
			writeJSONError(w, http.StatusNotFound, fmt.Sprintf("unknown adaptor version %q: not a CID", id))
			return
		}
		vs, err := d.versions()
		if err != nil {
			writeJSONError(w, http.StatusInternalServerError, err.Error())
			return
		}
		parent := map[string]string{}
		for _, v := range vs {
			parent[v.CID] = v.Parent
		}
		for _, v := range vs {
			if v.CID == id {
				writeJSON(w, http.StatusOK, struct {
					VersionView
					Lineage []string `json:"lineage"` // this CID, then its ancestors
				}{v, lineage(parent, id)})
				return
			}
		}
		writeJSONError(w, http.StatusNotFound, fmt.Sprintf("unknown adaptor version %s: not published by this coordinator", id))
	})
	m.Handle("/metrics", promhttp.HandlerFor(d.gath, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		what := "path"
		if strings.HasPrefix(r.URL.Path, "/api/") {
			what = "API path"
		}
		writeJSONError(w, http.StatusNotFound, fmt.Sprintf("unknown %s %q", what, r.URL.Path))
	})
	d.mux = m
}

func unknownJob(asked, current string) string {
	if current == "" {
		return fmt.Sprintf("unknown job %q: no job has started", asked)
	}
	return fmt.Sprintf("unknown job %q: the current job is %s", asked, current)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, "encode: "+err.Error())
		return
	}
	writeJSONBytes(w, code, b)
}

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(struct {
		Error  string `json:"error"`
		Status int    `json:"status"`
	}{msg, code})
	writeJSONBytes(w, code, b)
}

// writeJSONBytes answers with the JSON document b: never cached, never
// sniffed as anything else.
func writeJSONBytes(w http.ResponseWriter, code int, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}
