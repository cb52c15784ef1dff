package experiments

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"time"

	"carryon/coordinator"
	"carryon/dataset"
	"carryon/model"
	"carryon/tokenizer"
)

// SearchTrial is one configuration of a search and what it measured.
type SearchTrial struct {
	Width   int        `json:"width"`
	Layers  int        `json:"layers"`
	LR      float32    `json:"lr"`
	Sources []int      `json:"sources"` // base layers read (model.FinalLayer = -1 first)
	Run     CarryOnRun `json:"run"`
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
	// ThreeTrains estimates three separate `carryon train` runs of the
	// default carry-on (h=64, L=2, 200 steps), each paying the embedding:
	// 3 · (EmbedSeconds + 200 · RefStepMS).
	ThreeTrains float64 `json:"three_trains_seconds"`
	RefStepMS   float64 `json:"ref_step_ms"` // the default carry-on's step, trained alone
	BaseLoss    float64 `json:"base_loss"`   // base alone on the test split
}

// SearchGrid is the default search: widths × depths × learning rates ×
// sources, α chosen on the validation split for every trial.
func SearchGrid() []spec {
	var out []spec
	for _, src := range [][]int{nil, {model.FinalLayer, 0}} {
		for _, lr := range []float32{3e-3, 1e-2} {
			for _, h := range []int{32, 64, 128} {
				for _, l := range []int{1, 2} {
					out = append(out, spec{data: "fit", codec: "q8", width: h, layers: l, seed: 1, lr: lr, sources: src})
				}
			}
		}
	}
	return out
}

// searchTrials trains every spec for steps steps on ds (validation: ds.Val;
// test: test.Val), parallel at once, over one cache in cacheDir that
// collect fills first with every layer the specs read. Each trial's
// carry-on trains on the cache only.
func searchTrials(ctx context.Context, base *model.Base, fw coordinator.Forwarder, cacheDir string, log *slog.Logger,
	ds, test *dataset.Set, specs []spec, steps, parallel int, sz Sizes, progress func(string)) ([]SearchTrial, float64, error) {
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
	start := time.Now()
	for i, s := range specs {
		s.steps = steps
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
			trials[i] = SearchTrial{Width: s.width, Layers: s.layers, LR: s.lr, Sources: s.sources, Run: t.run, Seconds: time.Since(t0).Seconds()}
			if progress != nil {
				mu.Lock()
				progress(fmt.Sprintf("search: trial %d/%d h=%d L=%d lr=%g sources %s: test loss %.4f (α %.2f, step %d), %d params, %.0f ms/step, %.1f s",
					i+1, len(specs), s.width, s.layers, s.lr, sourceNames(s.sources), t.run.ValLoss, t.run.Alpha, t.run.BestStep, t.run.Params, t.run.StepMS, trials[i].Seconds))
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

// searchExp: the default grid over one cache, several trials at once.
func (r *runner) searchExp() error {
	out := &SearchResult{Steps: r.sz.SearchSteps, Parallel: r.sz.SearchParallel, BaseLoss: r.res.Setup.BaseLoss}
	if out.Parallel == 0 {
		out.Parallel = runtime.GOMAXPROCS(0)
	}
	// The embedding, cold, with the real base: what each separate
	// `carryon train` run would pay.
	var err error
	out.EmbedSeconds, err = r.coldEmbed("search-cold")
	if err != nil {
		return err
	}
	ref, err := r.carryOn(r.main("fit"))
	if err != nil {
		return err
	}
	out.RefStepMS = ref.run.StepMS
	out.ThreeTrains = 3 * (out.EmbedSeconds + 200*ref.run.StepMS/1000)
	out.Trials, out.TrialsSeconds, err = searchTrials(r.ctx, r.base, r.memo, filepath.Join(r.cacheDir, "search"), r.log,
		r.fit, r.test, SearchGrid(), r.sz.SearchSteps, out.Parallel, r.sz, r.opt.Progress)
	if err != nil {
		return err
	}
	for _, t := range out.Trials {
		r.res.Setup.CarryOnRuns++
		r.res.Setup.TrainSeconds += t.Run.StepMS * float64(t.Run.Steps) / 1000
	}
	r.logf("search: %d trials in %.0f s (+%.1f s embedding once); three separate trains ≈ %.0f s", len(out.Trials), out.TrialsSeconds, out.EmbedSeconds, out.ThreeTrains)
	r.res.Search = out
	return nil
}

// coldEmbed times the base's forward pass and bridge over the fitting
// data set and the test problems into a fresh cache (name under the
// run's cache directory), with the real base.
func (r *runner) coldEmbed(name string) (float64, error) {
	c, err := coordinator.New(nil, nil, r.base, coordinator.Config{CacheDir: filepath.Join(r.cacheDir, name), Codec: "q8", Logger: r.log})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return timed(func() error {
		if err := c.CollectLocal(r.ctx, r.fit, nil, nil); err != nil {
			return err
		}
		return c.CollectLocal(r.ctx, r.test, nil, nil)
	})
}

// SearchOptions configure Search (`carryon search`).
type SearchOptions struct {
	Data     string // GSM8K-style JSONL
	CacheDir string // embedding cache ("" : a temporary directory)
	Sizes    Sizes  // ValProblems, SelectProblems, TrainProblems, MaxRecords, Batch, SearchSteps, SearchParallel are used
	Progress func(string)
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
	out := &SearchResult{Steps: r.sz.SearchSteps, Parallel: r.sz.SearchParallel, BaseLoss: r.res.Setup.BaseLoss}
	t0 := time.Now()
	// The embedding: the base's forward pass over the data, once.
	c, err := coordinator.New(nil, nil, base, coordinator.Config{CacheDir: r.cacheDir, Codec: "q8", Logger: r.log,
		Layers: []int{model.FinalLayer, 0}})
	if err != nil {
		return nil, fmt.Errorf("experiments.Search: %w", err)
	}
	for _, d := range []*dataset.Set{r.fit, r.test} {
		if err := c.CollectLocal(ctx, d, nil, nil); err != nil {
			c.Close()
			return nil, fmt.Errorf("experiments.Search: %w", err)
		}
	}
	c.Close()
	out.EmbedSeconds = time.Since(t0).Seconds()
	if opt.Progress != nil {
		opt.Progress(fmt.Sprintf("embedding: %.1f s (base alone: %.4f on the test split)", out.EmbedSeconds, out.BaseLoss))
	}
	out.Trials, out.TrialsSeconds, err = searchTrials(ctx, base, nil, r.cacheDir, r.log, r.fit, r.test, SearchGrid(),
		r.sz.SearchSteps, r.sz.SearchParallel, r.sz, opt.Progress)
	if err != nil {
		return nil, fmt.Errorf("experiments.Search: %w", err)
	}
	out.Parallel = r.sz.SearchParallel
	if out.Parallel == 0 {
		out.Parallel = runtime.GOMAXPROCS(0)
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
	p("| h | L | LR | sources | params | ms/step | trial s | kept step | α | validation | test loss | Pareto |\n|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|:-:|\n")
	for _, t := range ts {
		par := ""
		if t.Pareto {
			par = "•"
		}
		p("| %d | %d | %g | %s | %d | %.0f | %.1f | %d | %.2f | %.4f | %.4f | %s |\n", t.Width, t.Layers, t.LR, sourceNames(t.Sources),
			t.Run.Params, t.Run.StepMS, t.Seconds, t.Run.BestStep, t.Run.Alpha, t.Run.SelectLoss, t.Run.ValLoss, par)
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
