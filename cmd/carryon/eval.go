package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/model"
	"carryon/tensor"
	"carryon/tokenizer"
)

func init() {
	register("eval", "score a base and its adaptor on GSM8K-style question/answer JSONL: answer loss, perplexity, exact match", runEval)
}

// evalScores are one system's results.
type evalScores struct {
	Loss       float64 `json:"loss"`        // mean answer-token cross-entropy (nats)
	Perplexity float64 `json:"perplexity"`  // exp(loss)
	ExactMatch float64 `json:"exact_match"` // fraction of greedy answers whose final number is right
	Correct    int     `json:"correct"`
}

type evalReport struct {
	Examples     int        `json:"examples"`
	AnswerTokens int        `json:"answer_tokens"`
	Alpha        float64    `json:"alpha"`
	Adaptors     []string   `json:"adaptors"`
	Base         evalScores `json:"base"`
	Adaptor      evalScores `json:"adaptor"`
}

// qaExample is one question/answer pair tokenized as training does
// (dataset.EncodePair of dataset.Prompt), cut at maxLen.
type qaExample struct {
	prompt  []int32 // BOS and the prompt
	ids     []int32 // prompt, answer, EOS
	targets []int32 // (len(ids)): next token where scored, else -1
}

func qaTokenize(tok tokenizer.Tokenizer, question, answer string, maxLen int) qaExample {
	ex := dataset.EncodePair(tok, dataset.Prompt(question), answer)
	n := min(len(ex.Tokens), maxLen)
	ex = dataset.Example{Tokens: ex.Tokens[:n], Loss: ex.Loss[:n]}
	return qaExample{prompt: ex.Tokens[:min(ex.PromptLen(), n)], ids: ex.Tokens, targets: ex.Targets()}
}

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("eval", "--model PATH|default --adaptor FILE|CID[,...] --data FILE.jsonl [flags]", stderr)
	modelFlag := fs.String("model", "default", "base model directory or .gguf file, or \"default\" for the embedded base")
	adaptors := fs.String("adaptor", "", "adaptor files or CIDs, comma-separated, applied in order as boosting stages")
	store := fs.String("store", defaultStoreDir(), "adaptor store where CIDs are looked up")
	data := fs.String("data", "", "JSONL with question and answer fields (GSM8K: the answer ends with '#### N')")
	limit := fs.Int("limit", 0, "score only the first N examples (0: all)")
	alpha := fs.Float64("alpha", 1, "scale α of the customisation")
	maxTokens := fs.Int("max-tokens", 256, "greedy answer length cap for exact match")
	seqLen := fs.Int("seq-len", 1024, "tokens per scored sequence at most")
	bridge := fs.String("bridge", "", "round-trip base hidden states through this bridge codec first, as in training (empty: exact)")
	noGen := fs.Bool("no-generate", false, "skip greedy generation (exact match)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *data == "" || *adaptors == "" {
		fs.Usage()
		return errors.New("--data and --adaptor are required")
	}
	m, err := model.Open(*modelFlag, model.OpenOptions{})
	if err != nil {
		return err
	}
	base, tok := m.Base, m.Tokenizer
	defer base.Close()
	stages, err := loadAdaptors(*adaptors, *store, base)
	if err != nil {
		return err
	}
	cos := carryon.Models(stages)
	f, err := os.Open(*data)
	if err != nil {
		return err
	}
	defer f.Close()
	rep := evalReport{Alpha: *alpha}
	for _, s := range stages {
		rep.Adaptors = append(rep.Adaptors, s.CID)
	}
	c := base.Config
	chunk := max(1, min(64, (1<<21)/c.Vocab))
	scratch := make([]float32, chunk*c.Vocab)
	var baseSum, adSum float64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 16<<20)
	for line := 1; sc.Scan(); line++ {
		if *limit > 0 && rep.Examples >= *limit {
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		b := strings.TrimSpace(sc.Text())
		if b == "" {
			continue
		}
		var rec struct{ Question, Answer string }
		if err := json.Unmarshal([]byte(b), &rec); err != nil {
			return fmt.Errorf("%s line %d: %w", *data, line, err)
		}
		if rec.Question == "" || rec.Answer == "" {
			return fmt.Errorf("%s line %d: want question and answer fields", *data, line)
		}
		ex := qaTokenize(tok, rec.Question, rec.Answer, min(*seqLen, c.MaxPos))
		T := len(ex.ids)
		x, y, err := carryon.ForwardStages(base, cos, float32(*alpha), ex.ids, *bridge)
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
		want, ok := dataset.FinalAnswer(rec.Answer)
		if !ok {
			continue // no final answer to match: counts as unanswerable
		}
		for i, st := range [][]*carryon.Model{nil, cos} {
			gen, _, err := carryon.GenerateIDs(base, st, float32(*alpha), ex.prompt, carryon.GenerateOptions{
				MaxTokens: *maxTokens, Stop: []int32{tok.EOS()}, Bridge: *bridge})
			if err != nil {
				return fmt.Errorf("%s line %d: %w", *data, line, err)
			}
			if got, ok := dataset.FinalAnswer(tok.Decode(gen)); ok && got == want {
				if i == 0 {
					rep.Base.Correct++
				} else {
					rep.Adaptor.Correct++
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", *data, err)
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
			s.out.ExactMatch = float64(s.out.Correct) / float64(rep.Examples)
		}
	}
	js, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, string(js))
	return nil
}
