package experiments

import (
	"bytes"
	"carryon/internal/atomicfile"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
)

// Plot names under Out/img/.
const (
	PlotLoss   = "exp1-loss.svg"
	PlotClock  = "exp2-clock.svg"
	PlotBridge = "exp3-bridge.svg"
	PlotShape  = "exp4-shape.svg"
	// PlotSearchParams and PlotSearchStep are the search's Pareto plots.
	PlotSearchParams = "exp5-search-params.svg"
	PlotSearchStep   = "exp5-search-step.svg"
)

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
			HLines: []HLine{{Y: l.BaseLoss, Name: "base alone"}}}
		for _, r := range l.Runs {
			x, y := curveXY(r.Curve, false)
			ch.Series = append(ch.Series, Series{Name: fmt.Sprintf("carry-on, %s set, seed %d", r.Data, r.Seed), X: x, Y: y, Markers: true, Dashed: r.Seed != 1})
		}
		out[PlotLoss] = ch
	}
	if c := res.Clock; c != nil {
		ch := Chart{Title: "Exp. 2: validation-split loss vs wall-clock training seconds",
			XLabel: "seconds (carry-on: base forward pass included)", YLabel: "loss (nats/token)",
			HLines: []HLine{{Y: c.BaseLoss, Name: "base alone"}}}
		lo, hi := c.BaseLoss, c.BaseLoss
		for _, m := range c.Methods {
			x, y := curveXY(m.Curve, true)
			ch.Series = append(ch.Series, Series{Name: shortName(m.Name), X: x, Y: y, Markers: true})
			lo = math.Min(lo, minOf(y))
		}
		// The scratch model starts near ln(vocab): keep the axis on the
		// region where the methods compete.
		ch.YMin, ch.YMax = lo-0.1*(hi-lo+0.5), hi+0.6*(hi-lo+0.5)
		out[PlotClock] = ch
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
	p("Run of %s: %.0f s wall, GOMAXPROCS %d; base forward %.1f s over %d sequences, once, reused by %d carry-on runs (%.0f s of training).\n\n",
		s.Date, s.WallSeconds, s.GOMAXPROCS, s.ForwardSeconds, s.ForwardSeqs, s.CarryOnRuns, s.TrainSeconds)
	if l := res.Loss; l != nil {
		p("## 1. Held-out answer-token loss\n\nThe carry-on kept is the best validation pass (step), with α chosen on the validation split; the loss is on the held-out test problems.\n\n")
		p("| system | trained on | seed | params | adaptor bytes | kept step | α | validation | held-out loss | vs base |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		p("| base alone | – | – | – | – | – | – | %.4f | %.4f | – |\n", s.BaseSelectLoss, l.BaseLoss)
		for _, r := range l.Runs {
			p("| base + carry-on h=%d L=%d, %s | %s (%d steps) | %d | %d | %d | %d | %.2f | %.4f | %.4f | %+.1f%% |\n",
				r.Width, r.Layers, r.Codec, dataName(s, r.Data), r.Steps, r.Seed, r.Params, r.AdaptorBytes, r.BestStep, r.Alpha, r.SelectLoss, r.ValLoss, 100*(r.ValLoss-l.BaseLoss)/l.BaseLoss)
		}
		p("\n![](img/%s)\n\n", PlotLoss)
	}
	if c := res.Clock; c != nil {
		p("## 2. Convergence at equal wall-clock\n\nBudget %.0f s per method; the carry-on's clock includes %.1f s of base forward over train and held-out problems.\n\n",
			c.BudgetSeconds, c.EmbedSeconds)
		p("| method | trained params | steps | LR | ms/step | seconds | kept step | held-out loss |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, m := range c.Methods {
			p("| %s | %d | %d | %.0e | %.0f | %.1f | %d | %.4f |\n", m.Name, m.Params, m.Steps, m.LR, m.StepMS, m.Seconds, m.BestStep, m.Loss)
		}
		p("\n![](img/%s)\n\n", PlotClock)
	}
	if br := res.Bridge; br != nil {
		p("## 3. Bridge bits\n\n| bridge | bytes/token | vs float32 | relative error | base through bridge | base + carry-on | best |\n|---|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range br.Rows {
			p("| %s | %d | %.1f× smaller | %.4f | %.4f | %.4f | %.4f |\n", r.Codec, r.BytesPerToken,
				float64(br.F32BytesPerToken)/float64(r.BytesPerToken), r.RelError, r.BaseLoss, r.ValLoss, r.BestLoss)
		}
		p("\n![](img/%s)\n\n", PlotBridge)
	}
	if sh := res.Shape; sh != nil {
		p("## 4. Width and depth\n\n| h | L | params | adaptor bytes | loss | best (step) | ms/step |\n|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range sh.Runs {
			p("| %d | %d | %d | %d | %.4f | %.4f (%d) | %.0f |\n", r.Width, r.Layers, r.Params, r.AdaptorBytes, r.ValLoss, r.BestLoss, r.BestStep, r.StepMS)
		}
		p("\n![](img/%s)\n\n", PlotShape)
	}
	if se := res.Search; se != nil {
		p("## 5. Search over one embedding cache\n\n%d configurations, %d steps each, %d at once; α chosen on the validation split for each. ", len(se.Trials), se.Steps, se.Parallel)
		p("The embedding (base forward, %.1f s cold) is paid once; the %d trials took %.0f s of wall-clock in all (%.1f s per trial on average). ",
			se.EmbedSeconds, len(se.Trials), se.TrialsSeconds, se.TrialsSeconds/float64(max(1, len(se.Trials))))
		p("Three separate `carryon train` runs of the default carry-on (each paying the embedding, 200 steps at %.0f ms/step trained alone) would take about %.0f s.\n\n", se.RefStepMS, se.ThreeTrains)
		b.Write(SearchTable(se))
		p("\n![](img/%s)\n![](img/%s)\n\n", PlotSearchParams, PlotSearchStep)
	}
	if mx := res.Mix; mx != nil {
		p("## 6. Mixtures of sources\n\n| sources | params | kept step | α | validation | held-out loss | ms/step |\n|---|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range mx.Runs {
			p("| %s | %d | %d | %.2f | %.4f | %.4f | %.0f |\n", sourceNames(r.Sources), r.Params, r.BestStep, r.Alpha, r.SelectLoss, r.ValLoss, r.StepMS)
		}
		p("\n")
	}
	if e := res.Exact; e != nil {
		p("## 7. Exact match (greedy, %d held-out problems)\n\n| system | correct | answers with \"#### N\" | ended by EOS | mean tokens |\n|---|--:|--:|--:|--:|\n", e.Problems)
		for _, r := range e.Rows {
			p("| %s | %d/%d | %d | %d | %.1f |\n", r.System, r.Correct, e.Problems, r.Formatted, r.Stopped, r.MeanTokens)
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

func dataName(s Setup, d string) string {
	if d == "wide" {
		return fmt.Sprintf("%d other problems, any length, cut to %d tokens", s.Wide, s.Context)
	}
	return fmt.Sprintf("%d fitting problems", s.Train)
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
