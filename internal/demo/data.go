package demo

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
)

// DefaultData returns the demo's data set: n grade-school arithmetic word
// problems as JSONL question/answer pairs, generated from a fixed seed (the
// same bytes on every machine). Only the answer tokens count in the loss,
// as in chain-of-thought SFT on GSM8K.
func DefaultData(n int) []byte {
	rng := rand.New(rand.NewPCG(2026, 11))
	names := []string{"Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"}
	things := []string{"apples", "marbles", "stickers", "books", "shells", "coins", "pencils", "cards"}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for range n {
		who, what := names[rng.IntN(len(names))], things[rng.IntN(len(things))]
		a, b := 2+rng.IntN(40), 1+rng.IntN(30)
		var q, ans string
		switch rng.IntN(3) {
		case 0:
			q = fmt.Sprintf("%s has %d %s and finds %d more. How many %s does %s have now?", who, a, what, b, what, who)
			ans = fmt.Sprintf("%s has %d + %d = %d %s.\n#### %d", who, a, b, a+b, what, a+b)
		case 1:
			if b > a {
				a, b = b, a
			}
			q = fmt.Sprintf("%s has %d %s and gives away %d. How many %s are left?", who, a, what, b, what)
			ans = fmt.Sprintf("%s has %d - %d = %d %s left.\n#### %d", who, a, b, a-b, what, a-b)
		default:
			a, b = 2+rng.IntN(9), 2+rng.IntN(9)
			q = fmt.Sprintf("%s buys %d bags of %s with %d in each bag. How many %s is that?", who, a, what, b, what)
			ans = fmt.Sprintf("%s gets %d * %d = %d %s.\n#### %d", who, a, b, a*b, what, a*b)
		}
		enc.Encode(map[string]string{"question": q, "answer": ans})
	}
	return buf.Bytes()
}
