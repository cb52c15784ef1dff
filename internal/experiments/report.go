package experiments

import (
	"bytes"
	"carryon/internal/atomicfile"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
)

// Plot names under Out/img/.
const (
	PlotLoss   = "exp1-loss.svg"
	PlotBridge = "exp3-bridge.svg"
	PlotShape  = "exp4-shape.svg"
	// PlotSearchParams and PlotSearchStep are the search's Pareto plots.
	PlotSearchParams = "exp5-search-params.svg"
	PlotSearchStep   = "exp5-search-step.svg"
)

// PlotClock is the clock experiment's plot for one budget.
func PlotClock(budget float64) string { return fmt.Sprintf("exp2-clock-%gs.svg", budget) }

// clockBudgets are the budgets c measured, in increasing order.
func clockBudgets(c *ClockResult) []float64 {
	var out []float64
	for _, m := range c.Methods {
		if !slices.Contains(out, m.Budget) {
			out = append(out, m.Budget)
		}
	}
	slices.Sort(out)
	return out
}

// Write writes res under dir: experiments.json, experiments-results.md and
// one SVG per plotted experiment in dir/img/. Each file is written to a
// temporary name and renamed.
func Write(res *Results, dir string) error {
	js, err := json.MarshalIndent(res, "", " ")
	if err != nil {
		return fmt.Errorf("experiments.Write: %w", err)
	}
	files := map[string][]byte{
		"experiments.json":       append(js, '\n'),
		"experiments-results.md": Tables(res),
	}
	for name, ch := range Charts(res) {
		files[filepath.Join("img", name)] = ch.SVG()
	}
	for name, data := range files {
		if err := writeFile(filepath.Join(dir, name), data); err != nil {
			return fmt.Errorf("experiments.Write: %w", err)
		}
	}
	return nil
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o644)
}

func curveXY(c Curve, seconds bool) (x, y []float64) {
	for i := range c.Step {
		if seconds {
			x = append(x, c.Seconds[i])
		} else {
			x = append(x, float64(c.Step[i]))
		}
		y = append(y, c.Loss[i])
	}
	return x, y
}

// Charts returns the plots of the experiments present in res, by file name.
func Charts(res *Results) map[string]Chart {
	out := map[string]Chart{}
	if l := res.Loss; l != nil {
		ch := Chart{Title: "Exp. 1: validation-split answer-token loss while training (h=64, L=2, q8)",
			XLabel: "optimiser step (batch of " + fmt.Sprint(res.Setup.Sizes.Batch) + " problems)", YLabel: "loss (nats/token)",
			HLines: []HLine{{Y: res.Setup.BaseSelectLoss, Name: "base alone"}}}
		for _, r := range l.Runs {
			x, y := curveXY(r.Curve, false)
			ch.Series = append(ch.Series, Series{Name: fmt.Sprintf("carry-on, %s set, seed %d", r.Data, r.Seed), X: x, Y: y, Markers: true, Dashed: r.Seed != 1})
		}
		out[PlotLoss] = ch
	}
	if c := res.Clock; c != nil {
		for _, budget := range clockBudgets(c) {
			ch := Chart{Title: fmt.Sprintf("Exp. 2: validation-split loss vs wall-clock seconds, budget %.0f s", budget),
				XLabel: "seconds (cold carry-on: the base's forward pass included)", YLabel: "loss (nats/token)",
				HLines: []HLine{{Y: res.Setup.BaseSelectLoss, Name: "base alone"}}}
			seen := map[string]bool{}
			for _, m := range c.Methods { // the lowest seed of each method
				if m.Budget == budget && !seen[m.Key] {
					seen[m.Key] = true
					x, y := curveXY(m.Curve, true)
					ch.Series = append(ch.Series, Series{Name: shortName(m.Name), X: x, Y: y, Markers: true, Dashed: m.Key == "cold"})
				}
			}
			out[PlotClock(budget)] = ch
		}
	}
	if b := res.Bridge; b != nil {
		var x, y, yb []float64
		var labels []string
		rows := append([]BridgeRow(nil), b.Rows...)
		sort.Slice(rows, func(i, j int) bool { return rows[i].BytesPerToken < rows[j].BytesPerToken })
		for _, r := range rows {
			x, y, yb = append(x, float64(r.BytesPerToken)), append(y, r.ValLoss), append(yb, r.BaseLoss)
			labels = append(labels, r.Codec)
		}
		out[PlotBridge] = Chart{Title: "Exp. 3: bridge bits: loss vs bytes per token on the wire",
			XLabel: fmt.Sprintf("bytes per token (float32 would be %d)", b.F32BytesPerToken), YLabel: "held-out loss (nats/token)",
			Series: []Series{{Name: "base + carry-on", X: x, Y: y, Labels: labels, Markers: true},
				{Name: "base through bridge", X: x, Y: yb, Dashed: true, Markers: true}}}
	}
	if s := res.Shape; s != nil {
		ch := Chart{Title: "Exp. 4: carry-on width and depth", XLabel: "blocks L", YLabel: "held-out loss (nats/token)"}
		byWidth := map[int]*Series{}
		var order []int
		for _, r := range s.Runs {
			sr, ok := byWidth[r.Width]
			if !ok {
				sr = &Series{Name: fmt.Sprintf("h = %d", r.Width), Markers: true}
				byWidth[r.Width] = sr
				order = append(order, r.Width)
			}
			sr.X, sr.Y = append(sr.X, float64(r.Layers)), append(sr.Y, r.ValLoss)
			sr.Labels = append(sr.Labels, fmt.Sprintf("%dk", (r.Params+500)/1000))
		}
		for _, w := range order {
			ch.Series = append(ch.Series, *byWidth[w])
		}
		if len(s.Runs) > 0 {
			ch.HLines = []HLine{{Y: s.Runs[0].BaseLoss, Name: "base alone (q8)"}}
		}
		out[PlotShape] = ch
	}
	if se := res.Search; se != nil && len(se.Trials) > 0 {
		out[PlotSearchParams], out[PlotSearchStep] = SearchCharts(se)
	}
	return out
}

func minOf(v []float64) float64 {
	m := math.Inf(1)
	for _, x := range v {
		m = math.Min(m, x)
	}
	return m
}

// shortName cuts a method name at its parenthesis for the legend.
func shortName(s string) string {
	if i := bytes.IndexByte([]byte(s), '('); i > 0 {
		return s[:i-1]
	}
	return s
}

// Tables renders the results as Markdown tables.
func Tables(res *Results) []byte {
	var b bytes.Buffer
	s := res.Setup
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("<!-- Generated by `carryon experiment`; do not edit. -->\n\n# Experiment results\n\n")
	p("Base %s (%s…): %d parameters, width %d, %d layers, vocabulary %d, context %d tokens. ",
		s.Base, short(s.BaseHash), s.BaseParams, s.Dim, s.BaseLayers, s.Vocab, s.Context)
	p("Data: %d problems read, %d fit the context; %d held out (test), %d validation (chooses checkpoints and α), %d trained on (%d answer tokens), "+
		"wide set %d other problems of any length, cut to the context (%d answer tokens); %d held-out answer tokens. ",
		s.Read, s.Fit, s.Val, s.Select, s.Train, s.TrainTokens, s.Wide, s.WideTokens, s.ValTokens)
	p("Base alone: %.4f nats per held-out answer token. ", s.BaseLoss)
	sj, _ := json.Marshal(s.Sizes)
	p("The setup was last written by the run of %s (sizes `%s`): %.0f s wall, GOMAXPROCS %d; base forward %.1f s over %d sequences, once, reused by %d carry-on runs (%.0f s of training).\n\n",
		s.Date, sj, s.WallSeconds, s.GOMAXPROCS, s.ForwardSeconds, s.ForwardSeqs, s.CarryOnRuns, s.TrainSeconds)
	if l := res.Loss; l != nil {
		p("## 1. Held-out answer-token loss\n\n%s", sectionNote(res, "loss"))
		p("The carry-on kept is the best validation pass (step), with α chosen on the validation split; the loss is on the held-out test problems.\n\n")
		p("| system | trained on | seed | params | adaptor bytes | kept step | α | validation | held-out loss | vs base |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		p("| base alone | – | – | – | – | – | – | %.4f | %.4f | – |\n", s.BaseSelectLoss, l.BaseLoss)
		for _, r := range l.Runs {
			p("| base + carry-on h=%d L=%d, %s | %s (%d steps) | %d | %d | %d | %d | %.2f | %.4f | %.4f | %+.1f%% |\n",
				r.Width, r.Layers, r.Codec, dataName(s, r.Data), r.Steps, r.Seed, r.Params, r.AdaptorBytes, r.BestStep, r.Alpha, r.SelectLoss, r.ValLoss, 100*(r.ValLoss-l.BaseLoss)/l.BaseLoss)
		}
		p("\n![](img/%s)\n\n", PlotLoss)
	}
	if c := res.Clock; c != nil {
		p("## 2. Convergence at equal wall-clock\n\n%s", sectionNote(res, "clock"))
		p("Each method's clock counts its training (validation passes excluded); the cold carry-on's also the base's forward pass over the training and validation problems into a fresh cache (embedding), both carry-ons' opening and reading the cache. ")
		p("Each keeps its best validation pass; the loss is on the held-out test problems. Load: 1-minute load average before and after the method ran.\n\n")
		for _, budget := range clockBudgets(c) {
			p("### Budget %.0f s\n\n", budget)
			p("| method | seed | trained params | steps | ms/step | embedding s | reads s | seconds | kept step | held-out loss | load | date |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
			for _, m := range c.Methods {
				if m.Budget == budget {
					p("| %s | %d | %d | %d | %.0f | %.1f | %.1f | %.1f | %d | %.4f | %.1f–%.1f | %s |\n", m.Name, m.Seed, m.Params, m.Steps, m.StepMS,
						m.EmbedSeconds, m.ReadSeconds, m.Seconds, m.BestStep, m.Loss, m.Load[0], m.Load[1], m.Date)
				}
			}
			p("\n| method | seeds | mean held-out loss | min | max |\n|---|--:|--:|--:|--:|\n")
			for _, k := range ClockKeys {
				var ls []float64
				name := ""
				for _, m := range c.Methods {
					if m.Budget == budget && m.Key == k {
						ls, name = append(ls, m.Loss), m.Name
					}
				}
				if len(ls) > 0 {
					p("| %s | %d | %.4f | %.4f | %.4f |\n", name, len(ls), mean(ls), slices.Min(ls), slices.Max(ls))
				}
			}
			p("\n![](img/%s)\n\n", PlotClock(budget))
		}
	}
	if br := res.Bridge; br != nil {
		p("## 3. Bridge bits\n\n%s", sectionNote(res, "bridge"))
		p("| bridge | bytes/token | vs float32 | relative error | base through bridge | base + carry-on | best |\n|---|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range br.Rows {
			p("| %s | %d | %.1f× smaller | %.4f | %.4f | %.4f | %.4f |\n", r.Codec, r.BytesPerToken,
				float64(br.F32BytesPerToken)/float64(r.BytesPerToken), r.RelError, r.BaseLoss, r.ValLoss, r.BestLoss)
		}
		p("\n![](img/%s)\n\n", PlotBridge)
	}
	if sh := res.Shape; sh != nil {
		p("## 4. Width and depth\n\n%s", sectionNote(res, "shape"))
		p("| h | L | params | adaptor bytes | loss | best (step) | ms/step |\n|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range sh.Runs {
			p("| %d | %d | %d | %d | %.4f | %.4f (%d) | %.0f |\n", r.Width, r.Layers, r.Params, r.AdaptorBytes, r.ValLoss, r.BestLoss, r.BestStep, r.StepMS)
		}
		p("\n![](img/%s)\n\n", PlotShape)
	}
	if se := res.Search; se != nil {
		p("## 5. Search over one embedding cache\n\n%s", sectionNote(res, "search"))
		p("%d configurations of up to %d steps, %d at once. ", len(se.Trials), se.Steps, se.Parallel)
		p("The embedding (base forward, %.1f s cold) is paid once; the %d trials took %.0f s of wall-clock in all (%.1f s per trial on average). ",
			se.EmbedSeconds, len(se.Trials), se.TrialsSeconds, se.TrialsSeconds/float64(max(1, len(se.Trials))))
		if se.EarlyStop {
			p("Successive halving: every trial trains to step %d and is ranked on the first %d validation problems; the best 1/%d go on, resumed from their checkpoint, at each rung (steps %s); %d trials stopped at a rung; the %d that reached step %d were scored on the whole validation split (checkpoint and α chosen there) and only they on the test split. ",
				se.Rungs[0], se.RungProblems, se.Eta, intList(se.Rungs), se.Stopped, len(se.Trials)-se.Stopped, se.Steps)
		} else {
			p("Every trial trains all its steps; α chosen on the validation split for each. ")
		}
		if se.ThreeTrains > 0 {
			p("Measured in the same run, three separate `carryon train` runs of the reference carry-on (h=64, L=2, %d steps, each in a fresh cache and so paying the embedding) took %.0f s (%s; %.0f CPU seconds); the search, embedding included, %.0f s (%.0f CPU seconds).\n\n",
				se.TrainSteps, se.ThreeTrains, secondsList(se.TrainSeconds), se.TrainsCPU, se.EmbedSeconds+se.TrialsSeconds, se.SearchCPU)
			p("Trials' wall time by phase, summed over the trials: %s.\n\n", se.Phases)
		} else {
			p("\n\n")
		}
		b.Write(SearchTable(se))
		p("\n![](img/%s)\n![](img/%s)\n\n", PlotSearchParams, PlotSearchStep)
	}
	if mx := res.Mix; mx != nil {
		p("## 6. Mixtures of sources\n\n%s", sectionNote(res, "mix"))
		p("| sources | seed | params | kept step | α | validation | held-out loss | ms/step |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range mx.Runs {
			p("| %s | %d | %d | %d | %.2f | %.4f | %.4f | %.0f |\n", mixNames(r.Sources, r.Mix), r.Seed, r.Params, r.BestStep, r.Alpha, r.SelectLoss, r.ValLoss, r.StepMS)
		}
		p("\n")
		if len(mx.Inference) > 0 {
			p("At inference (every base its own forward pass, `carryon.ForwardStages`; greedy answers by `carryon.GenerateIDs` with a key/value cache per base, %d held-out problems):\n\n", mx.ExactProblems)
			p("| sources (seed 1) | held-out loss, cache | held-out loss, inference | exact match | answers with \"#### N\" | <<a op b=c>> right | mean tokens | generation s |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
			for _, in := range mx.Inference {
				e := in.Exact
				p("| %s | %.6f | %.6f | %d/%d | %d | %d/%d | %.1f | %.0f |\n", in.Sources, in.CachedLoss, in.Loss, e.Correct, mx.ExactProblems, e.Formatted, e.CalcsRight, e.Calcs, e.MeanTokens, in.Seconds)
			}
			p("\n")
		}
	}
	if e := res.Exact; e != nil {
		p("## 7. Exact match (greedy, %d held-out problems)\n\n%s", e.Problems, sectionNote(res, "exact"))
		if e.FromTest > 0 && e.FromTest < e.Problems {
			p("The %d problems of the test split, then %d more that no run trains on.\n\n", e.FromTest, e.Problems-e.FromTest)
		}
		p("| system | correct | answers with \"#### N\" | ended by EOS | ended after the \"####\" line | mean tokens | <<a op b=c>> right |\n|---|--:|--:|--:|--:|--:|--:|\n")
		row := func(r ExactRow, n int) {
			p("| %s | %d/%d | %d | %d | %d | %.1f | %d/%d |\n", r.System, r.Correct, n, r.Formatted, r.Stopped, r.LineEnded, r.MeanTokens, r.CalcsRight, r.Calcs)
		}
		for _, r := range e.Rows {
			row(r, e.Problems)
		}
		if l := e.Long; l != nil {
			p("\nThe long-trained carry-on: h = %d, L = %d, %d steps on %s; kept step %d, α %.2f, validation %.4f, held-out test loss %.4f (base alone %.4f), %.0f ms/step.\n",
				l.Width, l.Layers, l.Steps, l.Data, l.BestStep, l.Alpha, l.SelectLoss, l.ValLoss, l.BaseLoss, l.StepMS)
		}
		if e.OneStep != nil {
			p("\nDiagnostic, on another task: the base alone on one-step problems of its own pretraining family.\n\n| system | correct | answers with \"#### N\" | ended by EOS | ended after the \"####\" line | mean tokens | <<a op b=c>> right |\n|---|--:|--:|--:|--:|--:|--:|\n")
			row(*e.OneStep, e.OneStepProblems)
		}
		for i, sm := range e.Samples {
			p("\nSample %d. Question: %q\n\n- reference: %q\n", i+1, sm.Question, sm.Reference)
			for j, a := range sm.Answers {
				if j < len(e.Rows) {
					p("- %s: %q\n", e.Rows[j].System, a)
				}
			}
		}
		p("\n")
	}
	return b.Bytes()
}

// sectionNote describes the run that produced the section of experiment
// name: when, how long, the load, and its sizes where they differ from
// the setup's.
func sectionNote(res *Results, name string) string {
	rec, ok := res.Sections[name]
	if !ok {
		return "*Run not recorded (from before the results kept a record per section).*\n\n"
	}
	return fmt.Sprintf("*Run of %s UTC: %.0f s wall, %.0f CPU seconds, load average %.1f–%.1f, GOMAXPROCS %d; sizes %s.*\n\n",
		rec.Date, rec.Seconds, rec.CPUSeconds, rec.Load[0], rec.Load[1], rec.GOMAXPROCS, sizesDiff(res.Setup.Sizes, rec.Sizes))
}

// sizesDiff writes the fields of b that differ from a's, as JSON.
func sizesDiff(a, b Sizes) string {
	var ma, mb map[string]any
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if json.Unmarshal(ja, &ma) != nil || json.Unmarshal(jb, &mb) != nil {
		return "unknown"
	}
	var diff []string
	for k := range mb {
		if !reflect.DeepEqual(ma[k], mb[k]) {
			v, _ := json.Marshal(mb[k])
			diff = append(diff, fmt.Sprintf("%q:%s", k, v))
		}
	}
	for k := range ma {
		if _, ok := mb[k]; !ok {
			diff = append(diff, fmt.Sprintf("%q: unset", k))
		}
	}
	if len(diff) == 0 {
		return "as the setup's"
	}
	sort.Strings(diff)
	return "as the setup's but `{" + strings.Join(diff, ",") + "}`"
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func dataName(s Setup, d string) string {
	if d == "wide" {
		return fmt.Sprintf("%d other problems, any length, cut to %d tokens", s.Wide, s.Context)
	}
	return fmt.Sprintf("%d fitting problems", s.Train)
}

func secondsList(xs []float64) string {
	out := ""
	for i, x := range xs {
		if i > 0 {
			out += " + "
		}
		out += fmt.Sprintf("%.0f", x)
	}
	return out
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// intList writes xs as "5, 14, 40".
func intList(xs []int) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = fmt.Sprint(x)
	}
	return strings.Join(out, ", ")
}
