package experiments

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/internal/synth"
	"carryon/model"
)

// exactSystem is one system the exact-match experiment decodes with.
type exactSystem struct {
	name   string
	base   *model.Base
	stages []*carryon.Model
	alpha  float32
	bridge string
	mix    []*model.Base // further bases of a mixture the stages read
}

// oneStepProblems and oneStepSeed are the diagnostic of the exact-match
// experiment: the base alone on problems of its own pretraining family
// (synth.OneStep; the seed may repeat problems the base was pretrained
// on, which can only help it).
const (
	oneStepProblems = 50
	oneStepSeed     = 99
)

// exactExp: greedy answers to held-out problems, scored on the number after
// "####", for the base alone and the base with each experiment-1 carry-on
// (its hidden states through the q8 bridge, as in training), and the base
// alone on one-step problems of its pretraining family.
func (r *runner) exactExp() error {
	systems := []exactSystem{{name: "base alone", base: r.base}}
	wide := r.main("fit") // the widest carry-on of the shape experiment
	wide.width = 256
	for _, sp := range []spec{r.main("fit"), r.main("wide"), wide} {
		t, err := r.carryOn(sp)
		if err != nil {
			return err
		}
		systems = append(systems, exactSystem{name: fmt.Sprintf("base + carry-on h=%d (%s, %d steps, α %.2f)", sp.width, sp.data, sp.steps, t.co.Config.Alpha), base: r.base,
			stages: []*carryon.Model{t.co}, alpha: t.co.Config.Alpha, bridge: "q8"})
	}
	// The held-out test problems first, then problems no run trains on.
	probs := append(slices.Clone(r.split.Val), r.split.Unused...)
	probs = probs[:min(len(probs), r.sz.ExactProblems)]
	var longRun *CarryOnRun
	if r.sz.ExactSteps > 0 {
		// The wide carry-on trained longer on every problem that is
		// neither scored here nor in the validation or wide sets.
		long := wide
		long.data, long.steps = "all", r.sz.ExactSteps
		unused := r.split.Unused[max(0, len(probs)-len(r.split.Val)):]
		ds, err := toDataset(r.tok, r.base.Config.MaxPos, append(slices.Clone(r.split.Train), unused...), r.split.Select)
		if err != nil {
			return err
		}
		// The base embeds the new problems itself (nil forwarder): the
		// runner's memo would hold every layer of them in memory.
		t, err := trainCarryOn(r.ctx, r.base, nil, r.cacheDir, r.log, ds, r.test, long, r.sz)
		if err != nil {
			return err
		}
		r.res.Setup.CarryOnRuns++
		r.logf("carry-on %s on %d problems: test loss %.4f, kept step %d (validation %.4f, α %.2f), %.0f ms/step",
			long.key(), len(r.split.Train)+len(unused), t.run.ValLoss, t.run.BestStep, t.run.SelectLoss, t.run.Alpha, t.run.StepMS)
		systems = append(systems, exactSystem{name: fmt.Sprintf("base + carry-on h=%d (%d problems, %d steps, α %.2f)", long.width, len(r.split.Train)+len(unused), long.steps, t.co.Config.Alpha),
			base: r.base, stages: []*carryon.Model{t.co}, alpha: t.co.Config.Alpha, bridge: "q8"})
		t.run.Data = fmt.Sprintf("%d problems: the training set and %d unused", len(r.split.Train)+len(unused), len(unused))
		longRun = &t.run
	}
	// The clock experiment's tuned bases (when it ran in this invocation).
	for _, tb := range r.tuned {
		systems = append(systems, exactSystem{name: shortName(tb.name) + " (clock budget)", base: tb.base})
	}
	out := &ExactResult{Problems: len(probs), FromTest: min(len(probs), len(r.split.Val)), Long: longRun}
	for _, s := range systems {
		out.Rows = append(out.Rows, ExactRow{System: s.name})
	}
	for pi, p := range probs {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		var sample *Sample
		if pi < 2 {
			sample = &Sample{Question: p.Question, Reference: p.Answer}
		}
		for si, s := range systems {
			text, err := r.answer(s, p, &out.Rows[si], len(probs))
			if err != nil {
				return err
			}
			if sample != nil {
				sample.Answers = append(sample.Answers, strings.TrimSpace(text))
			}
		}
		if sample != nil {
			out.Samples = append(out.Samples, *sample)
		}
	}
	// The diagnostic: does the base compute what it was pretrained on?
	if r.sz.ExactProblems > 0 {
		ps, err := synth.Generate(synth.OneStep, oneStepProblems, oneStepSeed)
		if err != nil {
			return err
		}
		out.OneStep = &ExactRow{System: fmt.Sprintf("base alone, %d one-step problems (its pretraining family, seed %d)", len(ps), oneStepSeed)}
		out.OneStepProblems = len(ps)
		for _, sp := range ps {
			p := Problem{Question: sp.Question, Answer: sp.Answer}
			p.Final, _ = dataset.FinalAnswer(sp.Answer)
			if _, err := r.answer(systems[0], p, out.OneStep, len(ps)); err != nil {
				return err
			}
		}
	}
	rows := slices.Clone(out.Rows)
	if out.OneStep != nil {
		rows = append(rows, *out.OneStep)
	}
	for _, row := range rows {
		r.logf("exact: %s: %d correct, %d with a '#### N' answer, %d ended by EOS, %d at the end of the '####' line, %.1f tokens on average; %d of %d <<a op b=c>> calculations right",
			row.System, row.Correct, row.Formatted, row.Stopped, row.LineEnded, row.MeanTokens, row.CalcsRight, row.Calcs)
	}
	r.res.Exact = out
	return nil
}

// answer generates s's greedy answer to p and scores it into row (of a
// table over n problems).
func (r *runner) answer(s exactSystem, p Problem, row *ExactRow, n int) (string, error) {
	c := r.base.Config
	qa := dataset.EncodePair(r.tok, dataset.Prompt(p.Question), "")
	prompt := qa.Tokens[:qa.PromptLen()]
	maxNew := c.MaxPos - len(prompt)
	if r.sz.ExactMaxTokens > 0 {
		maxNew = min(maxNew, r.sz.ExactMaxTokens)
	}
	var sofar []int32
	lineEnded := false
	gen, stopped, err := carryon.GenerateIDs(s.base, s.stages, s.alpha, prompt, carryon.GenerateOptions{
		MaxTokens: maxNew, Stop: []int32{r.tok.EOS()}, Bridge: s.bridge, Mix: s.mix,
		OnToken: func(id int32) bool {
			sofar = append(sofar, id)
			lineEnded = answerLineEnded(r.tok.Decode(sofar))
			return !lineEnded
		}})
	if err != nil {
		return "", err
	}
	text := r.tok.Decode(gen)
	row.MeanTokens += float64(len(gen)) / float64(n)
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
	k, right := calcsRight(text)
	row.Calcs, row.CalcsRight = row.Calcs+k, row.CalcsRight+right
	return text, nil
}

// calcRE is one GSM8K calculation annotation of two whole numbers: <<a op b=c>>.
var calcRE = regexp.MustCompile(`<<(\d+)([-+*/])(\d+)=(\d+)>>`)

// calcsRight counts the well-formed <<a op b=c>> annotations in text and
// those whose c is a op b (the arithmetic, whatever the operands).
func calcsRight(text string) (n, right int) {
	for _, m := range calcRE.FindAllStringSubmatch(text, -1) {
		a, err1 := strconv.Atoi(m[1])
		b, err2 := strconv.Atoi(m[3])
		c, err3 := strconv.Atoi(m[4])
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		n++
		want, ok := 0, true
		switch m[2] {
		case "+":
			want = a + b
		case "-":
			want = a - b
		case "*":
			want = a * b
		case "/":
			ok = b != 0 && a%b == 0
			if ok {
				want = a / b
			}
		}
		if ok && want == c {
			right++
		}
	}
	return n, right
}

// answerLineEnded reports whether text has a "####" line that has ended:
// GSM8K's answer is complete, and what follows is not scored.
func answerLineEnded(text string) bool {
	i := strings.Index(text, "####")
	return i >= 0 && strings.Contains(text[i:], "\n")
}
