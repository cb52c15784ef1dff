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
	wide := r.main("fit") // the widest carry-on of the shape experiment
	wide.width = 256
	for _, sp := range []spec{r.main("fit"), r.main("wide"), wide} {
		t, err := r.carryOn(sp)
		if err != nil {
			return err
		}
		systems = append(systems, system{name: fmt.Sprintf("base + carry-on h=%d (%s, α %.2f)", sp.width, sp.data, t.co.Config.Alpha), base: r.base,
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
			var sofar []int32
			lineEnded := false
			gen, stopped, err := carryon.GenerateIDs(s.base, s.stages, s.alpha, prompt, carryon.GenerateOptions{
				MaxTokens: maxNew, Stop: []int32{r.tok.EOS()}, Bridge: s.bridge,
				OnToken: func(id int32) bool {
					sofar = append(sofar, id)
					lineEnded = answerLineEnded(r.tok.Decode(sofar))
					return !lineEnded
				}})
			if err != nil {
				return err
			}
			text := r.tok.Decode(gen)
			row := &out.Rows[si]
			row.MeanTokens += float64(len(gen)) / float64(len(probs))
			switch {
			case stopped:
				row.Stopped++
			case lineEnded:
				row.LineEnded++
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
		r.logf("exact: %s: %d/%d correct, %d with a '#### N' answer, %d ended by EOS, %d at the end of the '####' line, %.1f tokens on average",
			row.System, row.Correct, out.Problems, row.Formatted, row.Stopped, row.LineEnded, row.MeanTokens)
	}
	r.res.Exact = out
	return nil
}

// answerLineEnded reports whether text has a "####" line that has ended:
// GSM8K's answer is complete, and what follows is not scored.
func answerLineEnded(text string) bool {
	i := strings.Index(text, "####")
	return i >= 0 && strings.Contains(text[i:], "\n")
}
