// Package synth generates GSM8K-style arithmetic word problems by program:
// each problem is a question, a worked answer whose every calculation is
// written in GSM8K's <<a op b=c>> notation, and a final "#### N" line.
// Nothing here is taken from GSM8K; the templates, names and items are this
// package's own. The output is deterministic for a seed.
//
// Problems come in families (Family): one-step problems and plain
// arithmetic drills, which the default base is pretrained on, and
// multi-step problems, which are held back from pretraining and form the
// experiments' synthetic task (internal/experiments), so that the task asks
// the base for something it was not trained on: composing steps.
package synth

import (
	"carryon/dataset"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// Family names a kind of problem.
type Family string

// The families. OneStep and Drill are the pretraining families;
// MultiStep is the held-back task family.
const (
	Drill     Family = "drill"      // "What is 37 + 48?" with the calculation written out
	OneStep   Family = "one-step"   // a word problem solved by one operation
	MultiStep Family = "multi-step" // a word problem solved by two or three operations
)

// Problem is one generated problem.
type Problem struct {
	Question string `json:"question"`
	Answer   string `json:"answer"` // worked solution, ending in "#### N"
	Result   int    `json:"-"`      // N
}

var names = []string{"Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jamal",
	"Kira", "Liam", "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor",
	"Wendy", "Yusuf", "Zoe", "Marta", "Oscar", "Priya", "Leo", "Nadia"}

// pronoun of each name (same index).
var pronouns = []string{"she", "he", "she", "he", "she", "he", "she", "he", "she", "he",
	"she", "he", "she", "he", "she", "he", "she", "she", "he", "she", "she", "he",
	"she", "he", "she", "she", "he", "she", "he", "she"}

var items = []string{"apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells",
	"cards", "eggs", "flowers", "coins", "buttons", "candles", "oranges", "toy cars", "beads", "muffins"}

var containers = []string{"boxes", "bags", "packs", "jars", "baskets", "crates", "trays"}

var shops = []string{"the market", "the store", "a bakery", "the fair", "a shop"}

type gen struct{ r *rand.Rand }

func (g gen) n(lo, hi int) int { return lo + g.r.IntN(hi-lo+1) }

func (g gen) person() (string, string) {
	i := g.r.IntN(len(names))
	return names[i], pronouns[i]
}

func (g gen) pick(s []string) string { return s[g.r.IntN(len(s))] }

func capital(s string) string { return strings.ToUpper(s[:1]) + s[1:] }

// calc writes one calculation as GSM8K does: "a op b = <<a op b=c>>c".
func calc(a int, op string, b, c int) string {
	return fmt.Sprintf("%d%s%d = <<%d%s%d=%d>>%d", a, op, b, a, op, b, c, c)
}

func done(q string, steps []string, n int) Problem {
	return Problem{Question: q, Answer: strings.Join(steps, "\n") + fmt.Sprintf("\n#### %d", n), Result: n}
}

func (g gen) drill() Problem {
	switch g.r.IntN(4) {
	case 0:
		a, b := g.n(2, 99), g.n(2, 99)
		return done(fmt.Sprintf("What is %d + %d?", a, b), []string{calc(a, "+", b, a+b)}, a+b)
	case 1:
		a := g.n(10, 199)
		b := g.n(1, a)
		return done(fmt.Sprintf("What is %d - %d?", a, b), []string{calc(a, "-", b, a-b)}, a-b)
	case 2:
		a, b := g.n(2, 30), g.n(2, 12)
		return done(fmt.Sprintf("What is %d times %d?", a, b), []string{calc(a, "*", b, a*b)}, a*b)
	default:
		b, c := g.n(2, 12), g.n(2, 20)
		a := b * c
		return done(fmt.Sprintf("What is %d divided by %d?", a, b), []string{calc(a, "/", b, c)}, c)
	}
}

func (g gen) oneStep() Problem {
	name, pr := g.person()
	item := g.pick(items)
	switch g.r.IntN(5) {
	case 0:
		a, b := g.n(3, 60), g.n(2, 40)
		return done(fmt.Sprintf("%s has %d %s. %s gets %d more %s. How many %s does %s have now?", name, a, item, capital(pr), b, item, item, pr),
			[]string{fmt.Sprintf("%s has %s %s now.", name, calc(a, "+", b, a+b), item)}, a+b)
	case 1:
		a := g.n(10, 90)
		b := g.n(1, a-1)
		return done(fmt.Sprintf("%s had %d %s and gave %d of them to a friend. How many %s does %s have left?", name, a, item, b, item, pr),
			[]string{fmt.Sprintf("%s has %s %s left.", name, calc(a, "-", b, a-b), item)}, a-b)
	case 2:
		a, b := g.n(2, 12), g.n(2, 15)
		c := g.pick(containers)
		return done(fmt.Sprintf("%s buys %d %s of %s at %s. Each holds %d %s. How many %s does %s buy?", name, a, c, item, g.pick(shops), b, item, item, pr),
			[]string{fmt.Sprintf("%s buys %s %s.", capital(pr), calc(a, "*", b, a*b), item)}, a*b)
	case 3:
		b, c := g.n(2, 9), g.n(2, 12)
		a := b * c
		return done(fmt.Sprintf("%s shares %d %s equally among %d friends. How many %s does each friend get?", name, a, item, b, item),
			[]string{fmt.Sprintf("Each friend gets %s %s.", calc(a, "/", b, c), item)}, c)
	default:
		a, b := g.n(2, 20), g.n(2, 9)
		return done(fmt.Sprintf("One of the %s costs $%d. How much do %d of them cost?", strings.TrimSuffix(item, "s"), a, b),
			[]string{fmt.Sprintf("They cost %s dollars.", calc(a, "*", b, a*b))}, a*b)
	}
}

func (g gen) multiStep() Problem {
	name, pr := g.person()
	item := g.pick(items)
	switch g.r.IntN(5) {
	case 0: // buy packs, give some away
		a, b := g.n(2, 9), g.n(2, 12)
		t := a * b
		c := g.n(1, t-1)
		return done(fmt.Sprintf("%s buys %d %s with %d %s in each. %s gives %d %s to %s sister. How many %s does %s have left?",
			name, a, g.pick(containers), b, item, capital(pr), c, item, possessive(pr), item, pr),
			[]string{fmt.Sprintf("%s buys %s %s.", capital(pr), calc(a, "*", b, t), item),
				fmt.Sprintf("%s has %s %s left.", capital(pr), calc(t, "-", c, t-c), item)}, t-c)
	case 1: // two purchases, change from a bill
		a, b, c, d := g.n(2, 9), g.n(2, 8), g.n(2, 9), g.n(2, 6)
		s := a*b + c*d
		bill := (s/10 + 1 + g.r.IntN(3)) * 10
		return done(fmt.Sprintf("%s buys %d notebooks at $%d each and %d pens at $%d each. %s pays with $%d. How much change does %s get?",
			name, a, b, c, d, capital(pr), bill, pr),
			[]string{fmt.Sprintf("The notebooks cost %s dollars.", calc(a, "*", b, a*b)),
				fmt.Sprintf("The pens cost %s dollars.", calc(c, "*", d, c*d)),
				fmt.Sprintf("Together they cost %s dollars.", calc(a*b, "+", c*d, s)),
				fmt.Sprintf("%s gets %s dollars in change.", capital(pr), calc(bill, "-", s, bill-s))}, bill-s)
	case 2: // per day over a week and some days
		a, d, e := g.n(2, 15), g.n(2, 7), g.n(1, 20)
		return done(fmt.Sprintf("%s reads %d pages every day for %d days, then reads %d more pages. How many pages does %s read in all?",
			name, a, d, e, pr),
			[]string{fmt.Sprintf("In %d days %s reads %s pages.", d, pr, calc(a, "*", d, a*d)),
				fmt.Sprintf("In all %s reads %s pages.", pr, calc(a*d, "+", e, a*d+e))}, a*d+e)
	case 3: // share after collecting
		b := g.n(2, 6)
		c := g.n(2, 10)
		tot := b * c
		a := g.n(1, tot-1)
		e := tot - a
		return done(fmt.Sprintf("%s has %d %s and finds %d more. %s puts them into %d equal groups. How many %s are in each group?",
			name, a, item, e, capital(pr), b, item),
			[]string{fmt.Sprintf("%s has %s %s.", capital(pr), calc(a, "+", e, tot), item),
				fmt.Sprintf("Each group has %s %s.", calc(tot, "/", b, c), item)}, c)
	default: // twice as many, then together
		a, k := g.n(2, 30), g.n(2, 4)
		other, _ := g.person()
		return done(fmt.Sprintf("%s has %d %s. %s has %d times as many %s as %s. How many %s do they have together?",
			name, a, item, other, k, item, name, item),
			[]string{fmt.Sprintf("%s has %s %s.", other, calc(a, "*", k, a*k), item),
				fmt.Sprintf("Together they have %s %s.", calc(a, "+", a*k, a+a*k), item)}, a+a*k)
	}
}

func possessive(pr string) string {
	if pr == "he" {
		return "his"
	}
	return "her"
}

// Generate returns n problems of family f drawn from seed. Equal arguments
// give equal problems.
func Generate(f Family, n int, seed uint64) ([]Problem, error) {
	g := gen{rand.New(rand.NewPCG(seed, uint64(len(f))<<32|0x5eed))}
	var next func() Problem
	switch f {
	case Drill:
		next = g.drill
	case OneStep:
		next = g.oneStep
	case MultiStep:
		next = g.multiStep
	default:
		return nil, fmt.Errorf("synth: unknown family %q (want %s, %s or %s)", f, Drill, OneStep, MultiStep)
	}
	if n < 0 {
		return nil, fmt.Errorf("synth: %d problems", n)
	}
	out := make([]Problem, n)
	for i := range out {
		out[i] = next()
	}
	return out, nil
}

// Text writes problems in the prompt template training uses
// (dataset.Prompt, then the answer), separated by blank lines: the form in which
// the pretraining corpus holds them.
func Text(ps []Problem) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteString("\n\n")
		}
		b.WriteString(dataset.Prompt(p.Question))
		b.WriteString(p.Answer)
	}
	return b.String()
}

// WriteCorpus writes ps into dir as text documents of perDoc problems each
// (files prefix-00000.txt, ...), the form `carryon pretrain --corpus` reads
// (one file, one document).
func WriteCorpus(dir, prefix string, ps []Problem, perDoc int) error {
	if perDoc < 1 {
		return fmt.Errorf("synth: write corpus: %d problems per document", perDoc)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("synth: write corpus: %w", err)
	}
	for i := 0; i < len(ps); i += perDoc {
		name := filepath.Join(dir, fmt.Sprintf("%s-%05d.txt", prefix, i/perDoc))
		if err := os.WriteFile(name, []byte(Text(ps[i:min(i+perDoc, len(ps))])+"\n"), 0o644); err != nil {
			return fmt.Errorf("synth: write corpus: %w", err)
		}
	}
	return nil
}

// WriteJSONL writes ps as JSONL records {"question", "answer"}, the form the
// coordinator's data reader and the experiments read, dropping a problem
// whose question repeats an earlier one (so a hash split cannot put one
// question on both sides). It returns how many it wrote.
func WriteJSONL(w io.Writer, ps []Problem) (int, error) {
	seen := make(map[string]bool, len(ps))
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	n := 0
	for _, p := range ps {
		if seen[p.Question] {
			continue
		}
		seen[p.Question] = true
		if err := enc.Encode(p); err != nil {
			return n, fmt.Errorf("synth: write jsonl: %w", err)
		}
		n++
	}
	return n, nil
}
