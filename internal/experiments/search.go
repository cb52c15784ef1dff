package experiments

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"carryon/coordinator"
	"carryon/dataset"
	"carryon/model"
	"carryon/tokenizer"
)

// SearchTrial is one configuration of a search and what it measured.
type SearchTrial struct {
	Width    int        `json:"width"`
	Layers   int        `json:"layers"`
	LR       float32    `json:"lr"`
	Sources  []int      `json:"sources"`             // base layers read (model.FinalLayer = -1 first)
	GateBias float32    `json:"gate_bias,omitempty"` // initial b_g
	Run      CarryOnRun `json:"run"`                 // Run.Stopped: the step an early stop ended it at
	// Seconds is the trial's wall time (training, validation, α choice and
	// test scoring) while other trials ran beside it.
	Seconds float64 `json:"seconds"`
	Pareto  bool    `json:"pareto"` // no other trial has both fewer parameters and a lower test loss
}

// SearchResult is a search over carry-on configurations on one embedding
// cache (the paper's search, DESIGN.md §2).
type SearchResult struct {
	Trials   []SearchTrial `json:"trials"`
	Steps    int           `json:"steps"`    // per trial
	Parallel int           `json:"parallel"` // trials trained at once
	// EmbedSeconds is the base's forward pass over the data (cold, the
	// real base), paid once for every trial.
	EmbedSeconds float64 `json:"embed_seconds"`
	// TrialsSeconds is the wall time of all the trials; each trial's cost
	// is only the carry-on's.
	TrialsSeconds float64 `json:"trials_seconds"`
	// Evals are the validation passes per trial (every Steps/Evals
	// steps); EarlyStop says whether a trial worse than the median of the
	// earlier trials at a pass was stopped there (Stopped counts them).
	Evals     int  `json:"evals"`
	EarlyStop bool `json:"early_stop"`
	Stopped   int  `json:"stopped"`
	// ThreeTrains is the measured wall time, in the same run, of three
	// separate `carryon train` runs (TrainSeconds each) of the reference
	// carry-on (h=64, L=2, TrainSteps steps, the command's defaults:
	// validation every steps/4, best kept), each in a fresh cache, so
	// each pays the base's forward pass; 0 when not measured.
	ThreeTrains  float64   `json:"three_trains_seconds"`
	TrainSeconds []float64 `json:"train_seconds,omitempty"`
	TrainSteps   int       `json:"train_steps,omitempty"`
	BaseLoss     float64   `json:"base_loss"` // base alone on the test split
	// SearchCPU and TrainsCPU are this process's CPU seconds during the
	// search (its embedding included) and during the three separate
	// trains: on a shared machine, the work each did, where the wall
	// times also measure the load of the moment (0: not measured).
	SearchCPU float64 `json:"search_cpu_seconds,omitempty"`
	TrainsCPU float64 `json:"trains_cpu_seconds,omitempty"`
	// Phases sums the trials' wall time by phase (trials ran Parallel at
	// once, so the sum exceeds TrialsSeconds).
	Phases Phases `json:"phases"`
}

// sumPhases adds up the trials' phases.
func sumPhases(ts []SearchTrial) Phases {
	var p Phases
	for _, t := range ts {
		q := t.Run.Phases
		p.Open, p.Load, p.Steps, p.Eval, p.Alpha, p.Test = p.Open+q.Open, p.Load+q.Load, p.Steps+q.Steps, p.Eval+q.Eval, p.Alpha+q.Alpha, p.Test+q.Test
	}
	return p
}

// String writes the phases with their shares of the whole.
func (p Phases) String() string {
	all := p.Open + p.Load + p.Steps + p.Eval + p.Alpha + p.Test
	if all <= 0 {
		return "no time measured"
	}
	f := func(name string, v float64) string { return fmt.Sprintf("%s %.1f s (%.0f%%)", name, v, 100*v/all) }
	return strings.Join([]string{f("open", p.Open), f("cache reads", p.Load), f("steps", p.Steps), f("validation", p.Eval), f("α grid", p.Alpha), f("test scoring", p.Test)}, ", ")
}

// SearchGrid is the default search: widths × depths × learning rates ×
// (sources, initial gate bias), α chosen on the validation split for
// every trial: 36 configurations.
func SearchGrid() []spec {
	var out []spec
	for _, v := range []struct {
		src  []int
		bias float32
	}{{nil, 0}, {[]int{model.FinalLayer, 0}, 0}, {nil, -2}} {
		for _, lr := range []float32{3e-3, 1e-2} {
			for _, h := range []int{32, 64, 128} {
				for _, l := range []int{1, 2} {
					out = append(out, spec{data: "fit", codec: "q8", width: h, layers: l, seed: 1, lr: lr, sources: v.src, gateBias: v.bias})
				}
			}
		}
	}
	return out
}

// searchEvals are the validation passes of a search trial: at a quarter,
// half, three quarters and the end of it, so validation costs the same
// share of a trial whatever its length.
const searchEvals = 4

// rungs is the search's early stop (asynchronous successive halving): at
// each validation pass before the last, a trial whose loss is above the
// median of the trials that reached that step before it (at least
// rungMin of them) stops there.
type rungs struct {
	mu sync.Mutex
	at map[int][]float64 // step → validation losses of the trials that passed it
}

const rungMin = 4

func (r *rungs) stop(e coordinator.EvalInfo) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	prior := r.at[e.Step]
	r.at[e.Step] = append(prior, e.Loss)
	if len(prior) < rungMin {
		return false
	}
	sorted := slices.Clone(prior)
	slices.Sort(sorted)
	n := len(sorted)
	median := (sorted[(n-1)/2] + sorted[n/2]) / 2
	return e.Loss > median
}

// searchTrials trains every spec for steps steps on ds (validation: ds.Val;
// test: test.Val), parallel at once, over one cache in cacheDir that
// collect fills first with every layer the specs read. Each trial's
// carry-on trains on the cache only.
func searchTrials(ctx context.Context, base *model.Base, fw coordinator.Forwarder, cacheDir string, log *slog.Logger,
	ds, test *dataset.Set, specs []spec, steps, parallel int, earlyStop bool, sz Sizes, progress func(string)) ([]SearchTrial, float64, error) {
	layers := []int{model.FinalLayer}
	seen := map[int]bool{model.FinalLayer: true}
	for _, s := range specs {
		for _, l := range s.sources {
			if !seen[l] {
				seen[l] = true
				layers = append(layers, l)
			}
		}
	}
	// Fill the cache once with every layer (so the trials only read it).
	c, err := coordinator.New(nil, nil, base, coordinator.Config{CacheDir: cacheDir, Codec: "q8", Logger: log, Layers: layers})
	if err != nil {
		return nil, 0, err
	}
	for _, d := range []*dataset.Set{ds, test} {
		if err := c.CollectLocal(ctx, d, fw, nil); err != nil {
			c.Close()
			return nil, 0, err
		}
	}
	c.Close()
	if parallel <= 0 {
		parallel = runtime.GOMAXPROCS(0)
	}
	trials := make([]SearchTrial, len(specs))
	errs := make([]error, len(specs))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	rs := &rungs{at: map[int][]float64{}}
	start := time.Now()
	for i, s := range specs {
		s.steps, s.evals = steps, searchEvals
		if earlyStop {
			s.stop = rs.stop
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				errs[i] = ctx.Err()
				return
			}
			t0 := time.Now()
			// A nil forwarder: every chunk is cached, CollectLocal reads nothing from the base.
			t, err := trainCarryOn(ctx, base, nil, cacheDir, log, ds, test, s, sz)
			if err != nil {
				errs[i] = fmt.Errorf("trial h=%d L=%d lr=%g sources %v: %w", s.width, s.layers, s.lr, s.sources, err)
				return
			}
			trials[i] = SearchTrial{Width: s.width, Layers: s.layers, LR: s.lr, Sources: s.sources, GateBias: s.gateBias, Run: t.run, Seconds: time.Since(t0).Seconds()}
			if progress != nil {
				stopped := ""
				if t.run.Stopped > 0 {
					stopped = fmt.Sprintf(", stopped at step %d", t.run.Stopped)
				}
				mu.Lock()
				progress(fmt.Sprintf("search: trial %d/%d h=%d L=%d lr=%g sources %s gate bias %g: test loss %.4f (α %.2f, step %d%s), %d params, %.0f ms/step, %.1f s",
					i+1, len(specs), s.width, s.layers, s.lr, sourceNames(s.sources), s.gateBias, t.run.ValLoss, t.run.Alpha, t.run.BestStep, stopped, t.run.Params, t.run.StepMS, trials[i].Seconds))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, 0, err
		}
	}
	markPareto(trials)
	return trials, time.Since(start).Seconds(), nil
}

// markPareto sets Pareto on the trials that no other trial beats on both
// parameters and test loss.
func markPareto(ts []SearchTrial) {
	for i := range ts {
		ts[i].Pareto = true
		for j := range ts {
			a, b := ts[j].Run, ts[i].Run
			if j != i && a.Params <= b.Params && a.ValLoss <= b.ValLoss && (a.Params < b.Params || a.ValLoss < b.ValLoss) {
				ts[i].Pareto = false
				break
			}
		}
	}
}

// sourceNames writes sources as the adaptor config does: final, layer:k.
func sourceNames(src []int) string {
	if len(src) == 0 {
		return "final"
	}
	out := ""
	for i, l := range src {
		if i > 0 {
			out += "+"
		}
		if l == model.FinalLayer {
			out += "final"
		} else {
			out += fmt.Sprintf("layer:%d", l)
		}
	}
	return out
}

// searchExp: the default grid over one cache, several trials at once,
// then three separate trains of the reference carry-on, timed in the same
// run.
func (r *runner) searchExp() error {
	out := &SearchResult{Steps: r.sz.SearchSteps, Parallel: r.sz.SearchParallel, BaseLoss: r.res.Setup.BaseLoss, Evals: searchEvals, EarlyStop: !r.sz.SearchNoStop}
	if out.Parallel == 0 {
		out.Parallel = runtime.GOMAXPROCS(0)
	}
	// The embedding, cold, with the real base, into the search's own cache.
	dir := filepath.Join(r.cacheDir, "search")
	var err error
	cpu0 := ProcessCPU()
	out.EmbedSeconds, err = timed(func() error { return fillCache(r.ctx, r.base, dir, r.log, r.fit, r.test) })
	if err != nil {
		return err
	}
	out.Trials, out.TrialsSeconds, err = searchTrials(r.ctx, r.base, nil, dir, r.log,
		r.fit, r.test, SearchGrid(), r.sz.SearchSteps, out.Parallel, out.EarlyStop, r.sz, r.opt.Progress)
	if err != nil {
		return err
	}
	out.SearchCPU = (ProcessCPU() - cpu0).Seconds()
	out.Phases = sumPhases(out.Trials)
	r.logf("search: trials' time by phase (summed over trials): %s", out.Phases)
	for _, t := range out.Trials {
		r.res.Setup.CarryOnRuns++
		r.res.Setup.TrainSeconds += t.Run.StepMS * float64(t.Run.Steps) / 1000
		if t.Run.Stopped > 0 {
			out.Stopped++
		}
	}
	if err := timeTrains(r.ctx, r.base, r.cacheDir, r.log, r.fit, r.sz, out, r.opt.Progress); err != nil {
		return err
	}
	r.logf("search: %d trials (%d stopped early) in %.0f s + %.1f s embedding once = %.0f s (%.0f CPU s); three separate trains %.0f s (%.0f CPU s)",
		len(out.Trials), out.Stopped, out.TrialsSeconds, out.EmbedSeconds, out.EmbedSeconds+out.TrialsSeconds, out.SearchCPU, out.ThreeTrains, out.TrainsCPU)
	r.res.Search = out
	return nil
}

// fillCache runs base over every sequence of sets into the cache in dir,
// with every layer the search's trials read (final and the embeddings).
func fillCache(ctx context.Context, base *model.Base, dir string, log *slog.Logger, sets ...*dataset.Set) error {
	c, err := coordinator.New(nil, nil, base, coordinator.Config{CacheDir: dir, Codec: "q8", Logger: log, Layers: []int{model.FinalLayer, 0}})
	if err != nil {
		return err
	}
	defer c.Close()
	for _, d := range sets {
		if err := c.CollectLocal(ctx, d, nil, nil); err != nil {
			return err
		}
	}
	return nil
}

// timeTrains times three separate runs of what `carryon train` does with
// its defaults and the reference shape (h = 64, L = 2, Sizes.Steps steps,
// validation every steps/4, the best pass kept): each in a fresh cache
// under dir, so each pays the base's forward pass over ds, then trains.
func timeTrains(ctx context.Context, base *model.Base, dir string, log *slog.Logger, ds *dataset.Set, sz Sizes, out *SearchResult, progress func(string)) error {
	bc := base.Config
	out.TrainSteps, out.TrainSeconds, out.ThreeTrains = sz.Steps, nil, 0
	cpu0 := ProcessCPU()
	defer func() { out.TrainsCPU = (ProcessCPU() - cpu0).Seconds() }()
	for i := range 3 {
		cfg := coordinator.Config{CacheDir: filepath.Join(dir, fmt.Sprintf("train-%d", i)), Codec: "q8", Logger: log,
			Train: coordinator.TrainConfig{Steps: sz.Steps, BatchSeqs: sz.Batch, KeepBest: true, Seed: uint64(i + 1), CarryOn: carryOnShape(bc.Dim, bc.Vocab, 64, 2)}}
		cfg.Train.Optim.LR = sz.LR
		sec, err := timed(func() error {
			c, err := coordinator.New(nil, nil, base, cfg)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := c.CollectLocal(ctx, ds, nil, nil); err != nil {
				return err
			}
			_, err = c.Train(ctx, ds, coordinator.Hooks{})
			return err
		})
		if err != nil {
			return fmt.Errorf("separate train %d: %w", i+1, err)
		}
		out.TrainSeconds = append(out.TrainSeconds, sec)
		out.ThreeTrains += sec
		if progress != nil {
			progress(fmt.Sprintf("separate train %d/3 (cold cache, %d steps): %.1f s", i+1, sz.Steps, sec))
		}
	}
	return nil
}

// SearchOptions configure Search (`carryon search`).
type SearchOptions struct {
	Data     string // GSM8K-style JSONL
	CacheDir string // embedding cache ("" : a temporary directory)
	Sizes    Sizes  // ValProblems, SelectProblems, TrainProblems, MaxRecords, Batch, LR, Steps, SearchSteps, SearchParallel, SearchNoStop are used
	// CompareTrains also times three separate `carryon train` runs of the
	// reference carry-on (Sizes.Steps steps each) after the search, in
	// fresh caches under CacheDir (SearchResult.ThreeTrains).
	CompareTrains bool
	Progress      func(string)
}

// Search runs the default grid (SearchGrid) on base over the data of opt
// and returns the trials, sorted by test loss.
func Search(ctx context.Context, base *model.Base, tok tokenizer.Tokenizer, opt SearchOptions) (*SearchResult, error) {
	if err := opt.Sizes.validate(); err != nil {
		return nil, fmt.Errorf("experiments.Search: %w", err)
	}
	r := &runner{ctx: ctx, opt: Options{Data: opt.Data, Progress: opt.Progress}, sz: opt.Sizes, base: base, tok: tok,
		memo: &memoForwarder{base: base, m: map[string]map[int][]float32{}}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		done: map[string]*trained{}, res: &Results{}, cacheDir: opt.CacheDir}
	if r.cacheDir == "" {
		return nil, fmt.Errorf("experiments.Search: a cache directory is required")
	}
	if err := r.setup(); err != nil {
		return nil, fmt.Errorf("experiments.Search: %w", err)
	}
	out := &SearchResult{Steps: r.sz.SearchSteps, Parallel: r.sz.SearchParallel, BaseLoss: r.res.Setup.BaseLoss, Evals: searchEvals, EarlyStop: !r.sz.SearchNoStop}
	if out.Parallel == 0 {
		out.Parallel = runtime.GOMAXPROCS(0)
	}
	// The embedding: the base's forward pass over the data, once.
	dir := filepath.Join(r.cacheDir, "search")
	var err error
	cpu0 := ProcessCPU()
	if out.EmbedSeconds, err = timed(func() error { return fillCache(ctx, base, dir, r.log, r.fit, r.test) }); err != nil {
		return nil, fmt.Errorf("experiments.Search: %w", err)
	}
	if opt.Progress != nil {
		opt.Progress(fmt.Sprintf("embedding: %.1f s (base alone: %.4f on the test split)", out.EmbedSeconds, out.BaseLoss))
	}
	out.Trials, out.TrialsSeconds, err = searchTrials(ctx, base, nil, dir, r.log, r.fit, r.test, SearchGrid(),
		r.sz.SearchSteps, out.Parallel, out.EarlyStop, r.sz, opt.Progress)
	if err != nil {
		return nil, fmt.Errorf("experiments.Search: %w", err)
	}
	out.SearchCPU = (ProcessCPU() - cpu0).Seconds()
	for _, t := range out.Trials {
		if t.Run.Stopped > 0 {
			out.Stopped++
		}
	}
	out.Phases = sumPhases(out.Trials)
	if opt.Progress != nil {
		opt.Progress("trials' time by phase (summed over trials): " + out.Phases.String())
	}
	if opt.CompareTrains {
		if err := timeTrains(ctx, base, r.cacheDir, r.log, r.fit, r.sz, out, opt.Progress); err != nil {
			return nil, fmt.Errorf("experiments.Search: %w", err)
		}
	}
	sort.SliceStable(out.Trials, func(i, j int) bool { return out.Trials[i].Run.ValLoss < out.Trials[j].Run.ValLoss })
	return out, nil
}

// SearchTable renders a search as a Markdown table, best first.
func SearchTable(s *SearchResult) []byte {
	var b []byte
	p := func(format string, args ...any) { b = fmt.Appendf(b, format, args...) }
	ts := append([]SearchTrial(nil), s.Trials...)
	sort.SliceStable(ts, func(i, j int) bool { return ts[i].Run.ValLoss < ts[j].Run.ValLoss })
	p("| h | L | LR | sources | gate bias | params | ms/step | trial s | kept step | stopped | α | validation | test loss | Pareto |\n|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|\n")
	for _, t := range ts {
		par := ""
		if t.Pareto {
			par = "•"
		}
		stopped := "–"
		if t.Run.Stopped > 0 {
			stopped = fmt.Sprint(t.Run.Stopped)
		}
		p("| %d | %d | %g | %s | %g | %d | %.0f | %.1f | %d | %s | %.2f | %.4f | %.4f | %s |\n", t.Width, t.Layers, t.LR, sourceNames(t.Sources), t.GateBias,
			t.Run.Params, t.Run.StepMS, t.Seconds, t.Run.BestStep, stopped, t.Run.Alpha, t.Run.SelectLoss, t.Run.ValLoss, par)
	}
	return b
}

// SearchCharts are the Pareto plots of a search: test loss against
// parameters and against step time.
func SearchCharts(s *SearchResult) (byParams, byStep Chart) {
	mk := func(title, xlabel string, x func(SearchTrial) float64) Chart {
		ch := Chart{Title: title, XLabel: xlabel, YLabel: "held-out loss (nats/token)"}
		if finite(s.BaseLoss) && s.BaseLoss > 0 {
			ch.HLines = []HLine{{Y: s.BaseLoss, Name: "base alone"}}
		}
		groups := map[string]*Series{}
		var order []string
		var front Series
		front.Name, front.Dashed = "Pareto front", true
		ts := append([]SearchTrial(nil), s.Trials...)
		sort.SliceStable(ts, func(i, j int) bool { return x(ts[i]) < x(ts[j]) })
		bestSoFar := math.Inf(1)
		for _, t := range ts {
			k := fmt.Sprintf("%s, lr %g", sourceNames(t.Sources), t.LR)
			if t.GateBias != 0 {
				k += fmt.Sprintf(", b_g %g", t.GateBias)
			}
			g, ok := groups[k]
			if !ok {
				g = &Series{Name: k, Markers: true, NoLine: true}
				groups[k] = g
				order = append(order, k)
			}
			g.X, g.Y = append(g.X, x(t)), append(g.Y, t.Run.ValLoss)
			g.Labels = append(g.Labels, fmt.Sprintf("h%d L%d", t.Width, t.Layers))
			if t.Run.ValLoss < bestSoFar {
				bestSoFar = t.Run.ValLoss
				front.X, front.Y = append(front.X, x(t)), append(front.Y, t.Run.ValLoss)
			}
		}
		for _, k := range order {
			ch.Series = append(ch.Series, *groups[k])
		}
		ch.Series = append(ch.Series, front)
		// Keep the axis on the trials (the base alone can be far above).
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, t := range ts {
			lo, hi = math.Min(lo, t.Run.ValLoss), math.Max(hi, t.Run.ValLoss)
		}
		if hi > lo {
			ch.YMin, ch.YMax = lo-0.05*(hi-lo), hi+0.05*(hi-lo)
		}
		return ch
	}
	byParams = mk("Search: held-out loss vs trained parameters", "carry-on parameters", func(t SearchTrial) float64 { return float64(t.Run.Params) })
	byStep = mk("Search: held-out loss vs step time", "ms per step (trials trained side by side)", func(t SearchTrial) float64 { return t.Run.StepMS })
	return byParams, byStep
}
