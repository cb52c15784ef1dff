package dataset

import (
	"regexp"
	"strings"
)

// Prompt is the template of a question/answer record, the one place it is
// written: training, evaluation and the experiments all read it from here.
// The prompt is not trained on; the answer after it is.
func Prompt(question string) string { return "Question: " + question + "\nAnswer: " }

// EncodePair tokenises a prompt/answer pair as training sees it: BOS (when
// the tokenizer has one) and the prompt, not trained on, then the answer and
// EOS (when it has one), trained on. Loss[0] is false. Nothing is cut.
func EncodePair(tok Tokenizer, prompt, answer string) Example {
	var ex Example
	add := func(train bool, ids ...int32) {
		for _, id := range ids {
			ex.Tokens, ex.Loss = append(ex.Tokens, id), append(ex.Loss, train)
		}
	}
	if bos := tok.BOS(); bos >= 0 {
		add(false, bos)
	}
	add(false, tok.Encode(prompt)...)
	add(true, tok.Encode(answer)...)
	if eos := tok.EOS(); eos >= 0 {
		add(true, eos)
	}
	if len(ex.Loss) > 0 {
		ex.Loss[0] = false
	}
	return ex
}

// PromptLen is the number of leading tokens of ex that are not trained on:
// BOS and the prompt of an EncodePair example.
func (e Example) PromptLen() int {
	for i, l := range e.Loss {
		if l {
			return i
		}
	}
	return len(e.Loss)
}

// finalRE matches GSM8K's final answer: the number after "####".
var finalRE = regexp.MustCompile(`####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)`)

// FinalAnswer extracts GSM8K's final answer, the number after "####",
// normalised (commas dropped, trailing decimal zeros dropped); ok is false
// when there is none.
func FinalAnswer(s string) (n string, ok bool) {
	m := finalRE.FindStringSubmatch(s)
	if m == nil {
		return "", false
	}
	n = strings.ReplaceAll(m[1], ",", "")
	if strings.Contains(n, ".") {
		n = strings.TrimRight(strings.TrimRight(n, "0"), ".")
	}
	return n, true
}
