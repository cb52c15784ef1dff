package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/model"
	"carryon/tensor"
	"carryon/tokenizer"
)

// evalScores are one system's results.
type evalScores struct {
	Loss       float64  `json:"loss"`                  // mean answer-token cross-entropy (nats)
	Perplexity float64  `json:"perplexity"`            // exp(loss)
	ExactMatch *float64 `json:"exact_match,omitempty"` // fraction of greedy answers whose final number is right; absent with --no-generate
	Correct    *int     `json:"correct,omitempty"`
}

type evalReport struct {
	Examples     int        `json:"examples"`
	Skipped      int        `json:"skipped"` // records without a question and an answer
	Cut          int        `json:"cut"`     // examples cut to --seq-len as training cuts them (the answer kept)
	AnswerTokens int        `json:"answer_tokens"`
	Alpha        float64    `json:"alpha"`
	Adaptors     []string   `json:"adaptors"`
	Base         evalScores `json:"base"`
	Adaptor      evalScores `json:"adaptor"`
}

// qaExample is one question/answer pair tokenized as training does
// (dataset.EncodePair of dataset.Prompt), cut to maxLen as training cuts
// (dataset.FitPair: the start of the question goes first).
type qaExample struct {
	prompt  []int32 // BOS and the prompt
	ids     []int32 // prompt, answer, EOS
	targets []int32 // (len(ids)): next token where scored, else -1
	cut     string  // how it was cut, "" if not
}

func qaTokenize(tok tokenizer.Tokenizer, question, answer string, maxLen int) qaExample {
	ex, cut := dataset.FitPair(dataset.EncodePair(tok, dataset.Prompt(question), answer), maxLen, tok.BOS() >= 0)
	return qaExample{prompt: ex.Tokens[:ex.PromptLen()], ids: ex.Tokens, targets: ex.Targets(), cut: cut}
}

// qaRecord is a question/answer line of an eval file.
type qaRecord struct {
	line             int
	question, answer string
}

// readQA reads the question/answer records of a JSONL file (at most limit
// when limit > 0), counting those without both in skipped.
func readQA(path string, limit int) (recs []qaRecord, skipped int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 16<<20)
	for line := 1; sc.Scan(); line++ {
		if limit > 0 && len(recs) >= limit {
			break
		}
		b := strings.TrimSpace(sc.Text())
		if b == "" {
			continue
		}
		var rec struct{ Question, Answer string }
		if err := json.Unmarshal([]byte(b), &rec); err != nil {
			return nil, 0, fmt.Errorf("%s line %d: %w", path, line, err)
		}
		if rec.Question == "" || rec.Answer == "" {
			skipped++ // counted and shown, not scored
			continue
		}
		recs = append(recs, qaRecord{line: line, question: rec.Question, answer: rec.Answer})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, 0, fmt.Errorf("%s: a line is longer than 16 MiB", path)
		}
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	return recs, skipped, nil
}

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("eval", "--model PATH|default --adaptor FILE|CID[,...] --data FILE.jsonl [flags]", stderr)
	modelFlag := addModelFlag(fs)
	adaptors := fs.String("adaptor", "", "adaptor files or CIDs, comma-separated, applied in order as boosting stages")
	cache := fs.String("cache", defaultCoordinatorCache(), "cache directory, as for 'carryon train': the default base is written here and CIDs are looked up in its adaptor store")
	store := fs.String("store", "", "adaptor store where CIDs are looked up (default: the --cache directory's)")
	asJSON := fs.Bool("json", false, "print one JSON object instead of a table")
	data := addQAFlag(fs)
	limit := fs.Int("limit", 0, "score only the first N examples (0: all)")
	alpha := fs.Float64("alpha", 1, "scale α of the customisation")
	maxTokens := fs.Int("max-tokens", 256, "greedy answer length cap for exact match")
	seqLen := fs.Int("seq-len", 1024, "tokens per scored sequence at most")
	bridge := addBridgeFlag(fs)
	mixFlag := addMixFlag(fs)
	noGen := fs.Bool("no-generate", false, "skip greedy generation (exact match)")
	if err := parseFlags(fs, args, "data", "adaptor"); err != nil {
		return err
	}
	if *store == "" {
		*store = filepath.Join(*cache, "adaptors")
	}
	set, err := openInference(*modelFlag, model.OpenOptions{CacheDir: *cache}, *adaptors, *store, *mixFlag)
	if err != nil {
		return err
	}
	defer set.Close()
	base, tok, stages, cos, mix, maxLen := set.Base, set.Tokenizer, set.Stages, set.Models, set.Mix, set.MaxLen()
	recs, skipped, err := readQA(*data, *limit)
	if err != nil {
		return err
	}
	rep := evalReport{Alpha: *alpha, Skipped: skipped}
	if !*noGen {
		rep.Base.Correct, rep.Adaptor.Correct = new(int), new(int)
	}
	for _, s := range stages {
		rep.Adaptors = append(rep.Adaptors, s.CID)
	}
	c := base.Config
	chunk := max(1, min(64, (1<<21)/c.Vocab))
	scratch := make([]float32, chunk*c.Vocab)
	var baseSum, adSum float64
	bar := newCounter(stderr, "eval", "examples") // stderr: --json output stays one object
	cutWhy := map[string]int{}
	for i, r := range recs {
		if err := ctx.Err(); err != nil {
			return err
		}
		bar.set(i, len(recs))
		line := r.line
		ex := qaTokenize(tok, r.question, r.answer, min(*seqLen, maxLen))
		if ex.cut != "" {
			rep.Cut++
			cutWhy[ex.cut]++
		}
		T := len(ex.ids)
		x, y, err := carryon.ForwardStages(base, cos, float32(*alpha), ex.ids, *bridge, mix...)
		if err != nil {
			return fmt.Errorf("%s line %d: %w", *data, line, err)
		}
		bl, n := tensor.CrossEntropyLMHead(nil, x, base.LMHead(), ex.targets, T, c.Dim, c.Vocab, chunk, 0, scratch)
		al, _ := tensor.CrossEntropyLMHead(nil, y, base.LMHead(), ex.targets, T, c.Dim, c.Vocab, chunk, 0, scratch)
		baseSum, adSum, rep.AnswerTokens = baseSum+bl, adSum+al, rep.AnswerTokens+n
		rep.Examples++
		if *noGen {
			continue
		}
		want, ok := dataset.FinalAnswer(r.answer)
		if !ok {
			continue // no final answer to match: counts as unanswerable
		}
		for i, st := range [][]*carryon.Model{nil, cos} {
			gen, _, err := carryon.GenerateIDs(base, st, float32(*alpha), ex.prompt, carryon.GenerateOptions{
				MaxTokens: *maxTokens, Stop: []int32{tok.EOS()}, Bridge: *bridge, Mix: mix})
			if err != nil {
				return fmt.Errorf("%s line %d: %w", *data, line, err)
			}
			if got, ok := dataset.FinalAnswer(tok.Decode(gen)); ok && got == want {
				if i == 0 {
					*rep.Base.Correct++
				} else {
					*rep.Adaptor.Correct++
				}
			}
		}
	}
	bar.set(len(recs), len(recs))
	for _, why := range slices.Sorted(maps.Keys(cutWhy)) {
		fmt.Fprintf(stderr, "eval: %d × %s\n", cutWhy[why], why)
	}
	if rep.AnswerTokens == 0 {
		return fmt.Errorf("%s: no answer tokens to score", *data)
	}
	for _, s := range []struct {
		out *evalScores
		sum float64
	}{{&rep.Base, baseSum}, {&rep.Adaptor, adSum}} {
		s.out.Loss = s.sum / float64(rep.AnswerTokens)
		s.out.Perplexity = math.Exp(s.out.Loss)
		if !*noGen {
			em := float64(*s.out.Correct) / float64(rep.Examples)
			s.out.ExactMatch = &em
		}
	}
	if *asJSON {
		js, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, string(js))
		return nil
	}
	writeEvalTable(stdout, rep)
	return nil
}

// writeEvalTable prints the report for people.
func writeEvalTable(w io.Writer, rep evalReport) {
	fmt.Fprintf(w, "%d examples (%d records skipped: no question or no answer; %d cut to --seq-len, the answer kept), %d answer tokens, alpha %g, adaptors %s\n\n",
		rep.Examples, rep.Skipped, rep.Cut, rep.AnswerTokens, rep.Alpha, strings.Join(rep.Adaptors, ", "))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tanswer loss (nats)\tperplexity\texact match\t")
	for _, s := range []struct {
		name string
		sc   evalScores
	}{{"base alone", rep.Base}, {"base + adaptor", rep.Adaptor}} {
		em := "not run"
		if s.sc.ExactMatch != nil {
			em = fmt.Sprintf("%d/%d (%.1f%%)", *s.sc.Correct, rep.Examples, 100**s.sc.ExactMatch)
		}
		fmt.Fprintf(tw, "%s\t%.4f\t%.2f\t%s\t\n", s.name, s.sc.Loss, s.sc.Perplexity, em)
	}
	tw.Flush()
}
