package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// drawFreq samples draws tokens from logits with a fresh sampler and
// returns how often each came.
func drawFreq(t *testing.T, o SampleOptions, logits []float32, draws int) []float64 {
	t.Helper()
	s, err := NewSampler(o)
	if err != nil {
		t.Fatal(err)
	}
	f := make([]float64, len(logits))
	for range draws {
		f[s.Sample(logits)]++
	}
	for i := range f {
		f[i] /= float64(draws)
	}
	return f
}

// checkFreq compares frequencies with probabilities want (unnormalised).
func checkFreq(t *testing.T, name string, got, want []float64, draws int) {
	t.Helper()
	var z float64
	for _, w := range want {
		z += w
	}
	for i := range got {
		p := want[i] / z
		sd := math.Sqrt(p * (1 - p) / float64(draws))
		if math.Abs(got[i]-p) > 5*sd+1e-9 {
			t.Errorf("%s: token %d drawn %.4f of the time, want %.4f ± %.4f", name, i, got[i], p, 5*sd)
		}
	}
}

// TestTopP: nucleus sampling keeps the smallest set of most likely tokens
// whose probabilities (at temperature 1) reach top_p, then draws among them
// at the temperature.
func TestTopP(t *testing.T) {
	// probabilities ∝ e^logit: 0.6439, 0.2369, 0.0871, 0.0321 (tokens 2, 0, 3, 1)
	logits := []float32{2, 0, 3, 1, float32(math.NaN())}
	const draws = 40000
	for _, tc := range []struct {
		p, temp float64
		keep    []int
	}{
		{0.5, 1, []int{2}},
		{0.7, 1, []int{2, 0}},
		{0.88, 1, []int{2, 0}},
		{0.9, 1, []int{2, 0, 3}},
		{0.99, 1, []int{2, 0, 3, 1}},
		{1, 1, []int{2, 0, 3, 1}},
		{0.9, 2, []int{2, 0, 3}}, // the set is chosen before the temperature
	} {
		want := make([]float64, len(logits))
		for _, i := range tc.keep {
			want[i] = math.Exp(float64(logits[i]) / tc.temp)
		}
		got := drawFreq(t, SampleOptions{Temperature: tc.temp, TopP: tc.p, Seed: 3}, logits, draws)
		checkFreq(t, fmt.Sprintf("top_p %v T %v", tc.p, tc.temp), got, want, draws)
	}
	// With top-k too: top-k first.
	got := drawFreq(t, SampleOptions{Temperature: 1, TopK: 2, TopP: 0.99, Seed: 4}, logits, draws)
	checkFreq(t, "top_k 2 top_p 0.99", got, []float64{math.Exp(2), 0, math.Exp(3), 0, 0}, draws)
	if err := (SampleOptions{TopP: 1.5}).Validate(); err == nil {
		t.Error("top-p 1.5 accepted")
	}
}

// TestPenalties: presence and frequency penalties lower the logits of
// accepted tokens as OpenAI defines (greedy sees them too), and leave the
// caller's logits as they were.
func TestPenalties(t *testing.T) {
	logits := []float32{5, 4.5, 1, 0}
	s, _ := NewSampler(SampleOptions{PresencePenalty: 0.4, FrequencyPenalty: 0.3})
	if id := s.Sample(logits); id != 0 {
		t.Fatalf("greedy before any token: %d, want 0", id)
	}
	s.Accept(0) // logit 0: 5 - 0.4 - 0.3 = 4.3 < 4.5
	if id := s.Sample(logits); id != 1 {
		t.Errorf("after one 0: %d, want 1 (5 - 0.4 - 0.3 < 4.5)", id)
	}
	if logits[0] != 5 || logits[1] != 4.5 {
		t.Errorf("Sample changed the caller's logits: %v", logits)
	}
	s.Accept(1) // logit 1: 4.5 - 0.7 = 3.8; logit 0 4.3
	if id := s.Sample(logits); id != 0 {
		t.Errorf("after 0, 1: %d, want 0", id)
	}
	s.Accept(0) // logit 0: 5 - 0.4 - 0.6 = 4.0 > 3.8
	if id := s.Sample(logits); id != 0 {
		t.Errorf("after 0, 1, 0: %d, want 0 (4.0 > 3.8)", id)
	}
	s.Accept(0) // 5 - 0.4 - 0.9 = 3.7 < 3.8
	if id := s.Sample(logits); id != 1 {
		t.Errorf("after 0, 1, 0, 0: %d, want 1 (3.7 < 3.8)", id)
	}
	// A negative penalty favours repeats; sampled draws follow the
	// penalised distribution.
	neg, _ := NewSampler(SampleOptions{Temperature: 1, PresencePenalty: -1, Seed: 9})
	neg.Accept(3)
	const draws = 40000
	f := make([]float64, 4)
	for range draws {
		f[neg.Sample(logits)]++
	}
	for i := range f {
		f[i] /= draws
	}
	checkFreq(t, "presence -1", f, []float64{math.Exp(5), math.Exp(4.5), math.Exp(1), math.Exp(1)}, draws)
}

func TestLogprobs(t *testing.T) {
	logits := []float32{1, 3, float32(math.NaN()), 2, 3}
	var z float64
	for _, v := range []float64{1, 3, 2, 3} {
		z += math.Exp(v)
	}
	lp, top := Logprobs(logits, 3, 3)
	if want := 2 - math.Log(z); math.Abs(lp-want) > 1e-6 {
		t.Errorf("logprob %v, want %v", lp, want)
	}
	wantIDs := []int32{1, 4, 3} // ties: the smaller id first
	if len(top) != 3 {
		t.Fatalf("top %v", top)
	}
	for i, w := range wantIDs {
		if top[i].ID != w || math.Abs(top[i].Logprob-(float64(logits[w])-math.Log(z))) > 1e-6 {
			t.Errorf("top[%d] = %+v, want token %d", i, top[i], w)
		}
	}
	if lp, _ := Logprobs(logits, 2, 0); !math.IsInf(lp, -1) {
		t.Errorf("NaN logit: logprob %v, want -Inf", lp)
	}
}

// lossy decodes bytes as ids, invalid UTF-8 as U+FFFD.
func lossy(ids []int32) string {
	b := make([]byte, len(ids))
	for i, id := range ids {
		b[i] = byte(id)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// TestTextStream drives TextStream with random byte streams (invalid
// UTF-8 included): the pieces are valid UTF-8 and add up to the final
// text, which is the text before the first stop string.
func TestTextStream(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab\n<|\xe2\x82\xac\xf0\x9f\x98\x80\xff")
	for range 2000 {
		raw := make([]int32, rng.IntN(40))
		for i := range raw {
			raw[i] = int32(alphabet[rng.IntN(len(alphabet))])
		}
		var stops []string
		for k := rng.IntN(3); k > 0; k-- {
			s := make([]byte, 1+rng.IntN(4))
			for i := range s {
				s[i] = alphabet[rng.IntN(len(alphabet))]
			}
			if str := strings.ToValidUTF8(string(s), ""); str != "" {
				stops = append(stops, str)
			}
		}
		checkTextStream(t, raw, stops)
	}
}

func checkTextStream(t *testing.T, raw []int32, stops []string) {
	t.Helper()
	ts := NewTextStream(lossy, stops)
	var sent strings.Builder
	more := true
	for i := 0; i < len(raw) && more; i++ {
		var piece string
		piece, more = ts.Add(raw[i])
		if !utf8.ValidString(piece) {
			t.Fatalf("raw %q stops %q: invalid piece %q", raw, stops, piece)
		}
		sent.WriteString(piece)
	}
	rest, text, hit := ts.Finish()
	sent.WriteString(rest)
	if sent.String() != text {
		t.Fatalf("raw %q stops %q: pieces %q, final %q", raw, stops, sent.String(), text)
	}
	full := lossy(raw)
	cut := firstStop(full, stops)
	if hit != (cut >= 0) || (hit && text != full[:cut]) || (!hit && text != full) {
		t.Fatalf("raw %q stops %q: text %q hit %v, want the text before the first stop in %q", raw, stops, text, hit, full)
	}
}

func FuzzTextStream(f *testing.F) {
	f.Add([]byte("hello\n<|user|>"), "\n<|")
	f.Add([]byte("\xe2\x82\xac\xe2\x82"), "\xe2\x82\xac")
	f.Fuzz(func(t *testing.T, raw []byte, stop string) {
		if len(raw) > 256 {
			return
		}
		ids := make([]int32, len(raw))
		for i, c := range raw {
			ids[i] = int32(c)
		}
		var stops []string
		if s := strings.ToValidUTF8(stop, ""); s != "" && len(s) <= 256 {
			stops = []string{s}
		}
		checkTextStream(t, ids, stops)
	})
}
