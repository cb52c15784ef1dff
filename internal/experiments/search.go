package experiments

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
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
	Width    int     `json:"width"`
	Layers   int     `json:"layers"`
	LR       float32 `json:"lr"`
	Sources  []int   `json:"sources"`             // base layers read (model.FinalLayer = -1 first)
	GateBias float32 `json:"gate_bias,omitempty"` // initial b_g
	// Run is the trial's last part: Run.Stopped is the rung it stopped at
	// (0: it reached the last); Run.Phases and Run.StepMS cover every part.
	Run CarryOnRun `json:"run"`
	// Rungs are its scores on the validation subset at each rung it
	// passed or stopped at (successive halving).
	Rungs []Rung `json:"rungs,omitempty"`
	// Scored: it reached the last rung and was scored on the test split
	// (Run.ValLoss); a trial stopped at a rung has no test loss.
	Scored bool `json:"scored"`
	// Seconds is the trial's wall time (training, validation, α choice and
	// test scoring, over every rung) while other trials ran beside it.
	Seconds float64 `json:"seconds"`
	Pareto  bool    `json:"pareto"` // scored, and no other scored trial has both fewer parameters and a lower test loss
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
	// EarlyStop says whether the search ran successive halving: trials
	// ranked at each of Rungs (steps) on the validation split's first
	// RungProblems problems, the best 1/Eta going on (Stopped counts the
	// others); the trials of the last rung get one validation pass on the
	// whole split and the test split.
	EarlyStop    bool  `json:"early_stop"`
	Rungs        []int `json:"rungs,omitempty"`
	Eta          int   `json:"eta,omitempty"`
	RungProblems int   `json:"rung_problems,omitempty"`
	Stopped      int   `json:"stopped"`
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

// The search's successive halving (synchronous, Hyperband's inner loop):
// every trial trains to the first rung and is scored on a small fixed
// validation subset (the validation split's first chunk); only the best
// 1/halvingEta go on to the next rung, resumed from their checkpoint; the
// trials that reach the last rung (all the steps) get the whole
// validation split (checkpoint kept, α chosen) and, only they, the test
// split. Rungs are at steps/η^k, k = halvingRungs-1 … 0, rounded up.
const (
	halvingEta   = 3
	halvingRungs = 3
)

// rungSteps are the steps at which successive halving ranks the trials of
// a search of steps steps: ascending, distinct, the last = steps.
func rungSteps(steps int) []int {
	var out []int
	d := 1
	for range halvingRungs - 1 {
		d *= halvingEta
	}
	for ; d >= 1; d /= halvingEta {
		r := (steps + d - 1) / d
		if len(out) == 0 || r > out[len(out)-1] {
			out = append(out, r)
		}
	}
	return out
}

// promote returns the indices of the ⌈n/η⌉ lowest of losses, lowest
// first (ties: the lower index first).
func promote(losses []float64) []int {
	idx := make([]int, len(losses))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return losses[idx[a]] < losses[idx[b]] })
	return idx[:(len(losses)+halvingEta-1)/halvingEta]
}

// Rung is a trial's score at a rung of the successive halving: its loss on
// the validation subset after Step steps.
type Rung struct {
	Step int     `json:"step"`
	Loss float64 `json:"loss"`
}

// searchTrials trains every spec for steps steps on ds (validation: ds.Val;
// test: test.Val), parallel at once, over one cache in cacheDir that
// collect fills first with every layer the specs read. Each trial's
// carry-on trains on the cache only. With halving, the trials go through
// the rungs of rungSteps (see halvingEta); without, every trial trains
// all its steps and is scored on the test split.
func searchTrials(ctx context.Context, base *model.Base, fw coordinator.Forwarder, cacheDir string, log *slog.Logger,
	ds, test *dataset.Set, specs []spec, steps, parallel int, halving bool, sz Sizes, progress func(string)) ([]SearchTrial, float64, error) {
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
	// Kept open until the trials end, so that the cache items the trials
	// read stay shared in memory between them (Config.ShareReads), across
	// the rungs too.
	defer func() {
		openMu.Lock()
		c.Close()
		openMu.Unlock()
	}()
	if parallel <= 0 {
		parallel = runtime.GOMAXPROCS(0)
	}
	rungs := []int{steps}
	if halving {
		rungs = rungSteps(steps)
		// A checkpoint of an earlier search on this cache would resume a
		// trial past its rung: start from none.
		if err := os.RemoveAll(filepath.Join(cacheDir, "checkpoints")); err != nil {
			return nil, 0, err
		}
	}
	rungVal := &dataset.Set{Val: ds.Val[:1]} // the validation split's first chunk
	trials := make([]SearchTrial, len(specs))
	stepSec := make([]float64, len(specs)) // training seconds so far, per trial
	for i, s := range specs {
		trials[i] = SearchTrial{Width: s.width, Layers: s.layers, LR: s.lr, Sources: s.sources, GateBias: s.gateBias}
	}
	alive := make([]int, len(specs))
	for i := range alive {
		alive[i] = i
	}
	var mu sync.Mutex
	start := time.Now()
	prev := 0
	for k, r := range rungs {
		last := k == len(rungs)-1
		errs := make([]error, len(alive))
		sem := make(chan struct{}, parallel)
		var wg sync.WaitGroup
		for j, i := range alive {
			s := specs[i]
			s.steps, s.evals, s.checkpoint = steps, 1, halving
			if !last {
				s.pauseAt, s.rungVal = r, rungVal
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				if ctx.Err() != nil {
					errs[j] = ctx.Err()
					return
				}
				t0 := time.Now()
				// A nil forwarder: every chunk is cached, CollectLocal reads nothing from the base.
				t, err := trainCarryOn(ctx, base, nil, cacheDir, log, ds, test, s, sz)
				if err != nil {
					errs[j] = fmt.Errorf("trial h=%d L=%d lr=%g sources %v, rung %d: %w", s.width, s.layers, s.lr, s.sources, r, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				tr := &trials[i]
				ph := tr.Run.Phases
				stepSec[i] += t.run.StepMS * float64(r-prev) / 1000
				tr.Run = t.run
				tr.Run.Phases = sumPhases([]SearchTrial{{Run: CarryOnRun{Phases: ph}}, {Run: t.run}})
				tr.Run.StepMS = 1000 * stepSec[i] / float64(r)
				tr.Seconds += time.Since(t0).Seconds()
				what := fmt.Sprintf("test loss %.4f (α %.2f, validation %.4f)", t.run.ValLoss, t.run.Alpha, t.run.SelectLoss)
				if !last {
					tr.Rungs = append(tr.Rungs, Rung{Step: r, Loss: t.run.SelectLoss})
					what = fmt.Sprintf("validation subset %.4f", t.run.SelectLoss)
				} else {
					tr.Scored = true
				}
				if progress != nil {
					progress(fmt.Sprintf("search: rung %d (step %d): trial %d/%d h=%d L=%d lr=%g sources %s gate bias %g: %s, %d params, %.0f ms/step, %.1f s",
						k+1, r, i+1, len(specs), s.width, s.layers, s.lr, sourceNames(s.sources), s.gateBias, what, t.run.Params, t.run.StepMS, tr.Seconds))
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return nil, 0, err
			}
		}
		if last {
			break
		}
		losses := make([]float64, len(alive))
		for j, i := range alive {
			losses[j] = trials[i].Rungs[len(trials[i].Rungs)-1].Loss
		}
		var next []int
		for _, j := range promote(losses) {
			next = append(next, alive[j])
		}
		slices.Sort(next)
		if progress != nil {
			progress(fmt.Sprintf("search: rung %d (step %d): %d of %d trials go on", k+1, r, len(next), len(alive)))
		}
		alive, prev = next, r
	}
	markPareto(trials)
	return trials, time.Since(start).Seconds(), nil
}

// markPareto sets Pareto on the trials that no other trial beats on both
// parameters and test loss.
func markPareto(ts []SearchTrial) {
	for i := range ts {
		ts[i].Pareto = ts[i].Scored
		for j := range ts {
			a, b := ts[j].Run, ts[i].Run
			if !ts[i].Scored {
				break
			}
			if j != i && ts[j].Scored && a.Params <= b.Params && a.ValLoss <= b.ValLoss && (a.Params < b.Params || a.ValLoss < b.ValLoss) {
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
	out, err := r.search()
	if err != nil {
		return err
	}
	r.logf("search: trials' time by phase (summed over trials): %s", out.Phases)
	for _, t := range out.Trials {
		r.res.Setup.CarryOnRuns++
		r.res.Setup.TrainSeconds += t.Run.StepMS * float64(cmp.Or(t.Run.Stopped, t.Run.Steps)) / 1000
	}
	if err := timeTrains(r.ctx, r.base, r.cacheDir, r.log, r.fit, r.sz, out, r.opt.Progress); err != nil {
		return err
	}
	r.logf("search: %d trials (%d stopped early) in %.0f s + %.1f s embedding once = %.0f s (%.0f CPU s); three separate trains %.0f s (%.0f CPU s)",
		len(out.Trials), out.Stopped, out.TrialsSeconds, out.EmbedSeconds, out.EmbedSeconds+out.TrialsSeconds, out.SearchCPU, out.ThreeTrains, out.TrainsCPU)
	r.res.Search = out
	return nil
}

// search runs the default grid (SearchGrid) over one cache: the embedding,
// cold, with the real base, into the search's own cache, then the trials,
// with successive halving unless Sizes.SearchNoStop.
func (r *runner) search() (*SearchResult, error) {
	out := &SearchResult{Steps: r.sz.SearchSteps, Parallel: r.sz.SearchParallel, BaseLoss: r.res.Setup.BaseLoss, EarlyStop: !r.sz.SearchNoStop}
	if out.Parallel == 0 {
		out.Parallel = runtime.GOMAXPROCS(0)
	}
	if out.EarlyStop {
		out.Rungs, out.Eta, out.RungProblems = rungSteps(out.Steps), halvingEta, len(r.fit.Val[0].Seqs)
	}
	dir := filepath.Join(r.cacheDir, "search")
	var err error
	cpu0 := ProcessCPU()
	if out.EmbedSeconds, err = timed(func() error {
		return fillCache(r.ctx, r.base, nil, dir, r.log, []int{model.FinalLayer, 0}, r.fit, r.test)
	}); err != nil {
		return nil, err
	}
	r.logf("search: embedding %.1f s (base alone: %.4f on the test split)", out.EmbedSeconds, out.BaseLoss)
	out.Trials, out.TrialsSeconds, err = searchTrials(r.ctx, r.base, nil, dir, r.log,
		r.fit, r.test, SearchGrid(), r.sz.SearchSteps, out.Parallel, out.EarlyStop, r.sz, r.opt.Progress)
	if err != nil {
		return nil, err
	}
	out.SearchCPU = (ProcessCPU() - cpu0).Seconds()
	out.Phases = sumPhases(out.Trials)
	for _, t := range out.Trials {
		if t.Run.Stopped > 0 {
			out.Stopped++
		}
	}
	return out, nil
}

// fillCache runs base (through fw; nil: base itself) over every sequence
// of sets into the q8 cache in dir, with the base layers given (nil: the
// final one; the search's trials read final and the embeddings).
func fillCache(ctx context.Context, base *model.Base, fw coordinator.Forwarder, dir string, log *slog.Logger, layers []int, sets ...*dataset.Set) error {
	c, err := coordinator.New(nil, nil, base, coordinator.Config{CacheDir: dir, Codec: "q8", Logger: log, Layers: layers})
	if err != nil {
		return err
	}
	defer c.Close()
	for _, d := range sets {
		if err := c.CollectLocal(ctx, d, fw, nil); err != nil {
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
	cacheDir, removeCache, err := cacheDirOrTemp(opt.CacheDir, "carryon-search-*")
	if err != nil {
		return nil, fmt.Errorf("experiments.Search: %w", err)
	}
	defer removeCache()
	r := &runner{ctx: ctx, opt: Options{Data: opt.Data, Progress: opt.Progress}, sz: opt.Sizes, base: base, tok: tok,
		memo: &memoForwarder{base: base, m: map[string]map[int][]float32{}}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		done: map[string]*trained{}, res: &Results{}, cacheDir: cacheDir}
	if err := r.setup(); err != nil {
		return nil, fmt.Errorf("experiments.Search: %w", err)
	}
	out, err := r.search()
	if err != nil {
		return nil, fmt.Errorf("experiments.Search: %w", err)
	}
	r.logf("trials' time by phase (summed over trials): %s", out.Phases)
	if opt.CompareTrains {
		if err := timeTrains(ctx, base, r.cacheDir, r.log, r.fit, r.sz, out, opt.Progress); err != nil {
			return nil, fmt.Errorf("experiments.Search: %w", err)
		}
	}
	sort.SliceStable(out.Trials, func(i, j int) bool { return searchBefore(out.Trials[i], out.Trials[j]) })
	return out, nil
}

// searchBefore orders trials best first: the scored ones by test loss,
// then the others by the rung they reached (later first) and their loss
// there.
func searchBefore(a, b SearchTrial) bool {
	switch {
	case a.Scored != b.Scored:
		return a.Scored
	case a.Scored:
		return a.Run.ValLoss < b.Run.ValLoss
	case a.Run.Stopped != b.Run.Stopped:
		return a.Run.Stopped > b.Run.Stopped
	}
	return lastRung(a).Loss < lastRung(b).Loss
}

func lastRung(t SearchTrial) Rung {
	if len(t.Rungs) == 0 {
		return Rung{Loss: math.Inf(1)}
	}
	return t.Rungs[len(t.Rungs)-1]
}

// SearchTable renders a search as a Markdown table, best first.
func SearchTable(s *SearchResult) []byte {
	var b []byte
	p := func(format string, args ...any) { b = fmt.Appendf(b, format, args...) }
	ts := append([]SearchTrial(nil), s.Trials...)
	sort.SliceStable(ts, func(i, j int) bool { return searchBefore(ts[i], ts[j]) })
	p("| h | L | LR | sources | gate bias | params | ms/step | trial s | steps | rungs (validation subset) | α | validation | test loss | Pareto |\n|--:|--:|--:|---|--:|--:|--:|--:|--:|---|--:|--:|--:|:-:|\n")
	for _, t := range ts {
		par := ""
		if t.Pareto {
			par = "•"
		}
		var rs []string
		for _, r := range t.Rungs {
			rs = append(rs, fmt.Sprintf("%.3f @%d", r.Loss, r.Step))
		}
		rungs := cmp.Or(strings.Join(rs, ", "), "–")
		steps, alpha, val, test := t.Run.Steps, "–", "–", "–"
		if t.Run.Stopped > 0 {
			steps = t.Run.Stopped
		}
		if t.Scored {
			alpha, val, test = fmt.Sprintf("%.2f", t.Run.Alpha), fmt.Sprintf("%.4f", t.Run.SelectLoss), fmt.Sprintf("%.4f", t.Run.ValLoss)
		}
		p("| %d | %d | %g | %s | %g | %d | %.0f | %.1f | %d | %s | %s | %s | %s | %s |\n", t.Width, t.Layers, t.LR, sourceNames(t.Sources), t.GateBias,
			t.Run.Params, t.Run.StepMS, t.Seconds, steps, rungs, alpha, val, test, par)
	}
	return b
}

// SearchCharts are the Pareto plots of a search: test loss against
// parameters and against step time.
func SearchCharts(s *SearchResult) (byParams, byStep Chart) {
	mk := func(title, xlabel string, x func(SearchTrial) float64) Chart {
		ch := Chart{Title: title, XLabel: xlabel, YLabel: "held-out loss; stopped trials: validation subset (nats/token)"}
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
		y := func(t SearchTrial) float64 { // test loss, or the last rung's for a stopped trial
			if t.Scored {
				return t.Run.ValLoss
			}
			return lastRung(t).Loss
		}
		for _, t := range ts {
			k := fmt.Sprintf("%s, lr %g", sourceNames(t.Sources), t.LR)
			if t.GateBias != 0 {
				k += fmt.Sprintf(", b_g %g", t.GateBias)
			}
			if !t.Scored {
				k = fmt.Sprintf("stopped at step %d (validation subset)", t.Run.Stopped)
			}
			g, ok := groups[k]
			if !ok {
				g = &Series{Name: k, Markers: true, NoLine: true}
				groups[k] = g
				order = append(order, k)
			}
			g.X, g.Y = append(g.X, x(t)), append(g.Y, y(t))
			g.Labels = append(g.Labels, fmt.Sprintf("h%d L%d", t.Width, t.Layers))
			if t.Scored && t.Run.ValLoss < bestSoFar {
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
			lo, hi = math.Min(lo, y(t)), math.Max(hi, y(t))
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
