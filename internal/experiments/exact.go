package experiments

import (
	"fmt"
	"strings"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/model"
)

// exactExp: greedy answers to held-out problems, scored on the number after
// "####", for the base alone and the base with each experiment-1 carry-on
// (its hidden states through the q8 bridge, as in training).
func (r *runner) exactExp() error {
	type system struct {
		name   string
		base   *model.Base
		stages []*carryon.Model
		alpha  float32
		bridge string
	}
	systems := []system{{name: "base alone", base: r.base}}
	for _, d := range []string{"fit", "wide"} {
		t, err := r.carryOn(r.main(d))
		if err != nil {
			return err
		}
		systems = append(systems, system{name: fmt.Sprintf("base + carry-on (%s, α %.2f)", d, t.co.Config.Alpha), base: r.base,
			stages: []*carryon.Model{t.co}, alpha: t.co.Config.Alpha, bridge: "q8"})
	}
	// The clock experiment's tuned bases (when it ran in this invocation).
	for _, tb := range r.tuned {
		systems = append(systems, system{name: shortName(tb.name) + " (clock budget)", base: tb.base})
	}
	probs := r.split.Val[:min(len(r.split.Val), r.sz.ExactProblems)]
	out := &ExactResult{Problems: len(probs)}
	for _, s := range systems {
		out.Rows = append(out.Rows, ExactRow{System: s.name})
	}
	c := r.base.Config
	for pi, p := range probs {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		qa := dataset.EncodePair(r.tok, dataset.Prompt(p.Question), "")
		prompt := qa.Tokens[:qa.PromptLen()]
		maxNew := c.MaxPos - len(prompt)
		if r.sz.ExactMaxTokens > 0 {
			maxNew = min(maxNew, r.sz.ExactMaxTokens)
		}
		var sample *Sample
		if pi < 2 {
			sample = &Sample{Question: p.Question, Reference: p.Answer}
		}
		for si, s := range systems {
			gen, stopped, err := carryon.GenerateIDs(s.base, s.stages, s.alpha, prompt, carryon.GenerateOptions{
				MaxTokens: maxNew, Stop: []int32{r.tok.EOS()}, Bridge: s.bridge})
			if err != nil {
				return err
			}
			text := r.tok.Decode(gen)
			row := &out.Rows[si]
			row.MeanTokens += float64(len(gen)) / float64(len(probs))
			if stopped {
				row.Stopped++
			}
			if got, ok := dataset.FinalAnswer(text); ok {
				row.Formatted++
				if p.Final != "" && got == p.Final {
					row.Correct++
				}
			}
			if sample != nil {
				sample.Answers = append(sample.Answers, strings.TrimSpace(text))
			}
		}
		if sample != nil {
			out.Samples = append(out.Samples, *sample)
		}
	}
	for _, row := range out.Rows {
		r.logf("exact: %s: %d/%d correct, %d with a '#### N' answer, %d stopped, %.1f tokens on average",
			row.System, row.Correct, out.Problems, row.Formatted, row.Stopped, row.MeanTokens)
	}
	r.res.Exact = out
	return nil
}
