package synth

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var calcRE = regexp.MustCompile(`<<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)`)

// TestArithmeticIsRight checks every calculation of every family: the
// <<a op b=c>> annotations compute, the text after each repeats c, and
// "#### N" is the last result.
func TestArithmeticIsRight(t *testing.T) {
	for _, f := range []Family{Drill, OneStep, MultiStep} {
		ps, err := Generate(f, 500, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			ms := calcRE.FindAllStringSubmatch(p.Answer, -1)
			if len(ms) == 0 || f != MultiStep && len(ms) != 1 || f == MultiStep && len(ms) < 2 {
				t.Fatalf("%s: %d calculations in %q", f, len(ms), p.Answer)
			}
			last := 0
			for _, m := range ms {
				a, _ := strconv.Atoi(m[1])
				b, _ := strconv.Atoi(m[3])
				c, _ := strconv.Atoi(m[4])
				want := map[string]int{"+": a + b, "-": a - b, "*": a * b}[m[2]]
				if m[2] == "/" {
					if b == 0 || a%b != 0 {
						t.Fatalf("%s: %s does not divide exactly", f, m[0])
					}
					want = a / b
				}
				if c != want || m[5] != m[4] || c < 0 {
					t.Fatalf("%s: %s is wrong in %q", f, m[0], p.Answer)
				}
				last = c
			}
			if !strings.HasSuffix(p.Answer, fmt.Sprintf("\n#### %d", last)) || p.Result != last {
				t.Fatalf("%s: answer %q does not end in #### %d", f, p.Answer, last)
			}
		}
	}
}

func TestDeterministicAndValidated(t *testing.T) {
	a, _ := Generate(MultiStep, 50, 9)
	b, _ := Generate(MultiStep, 50, 9)
	c, _ := Generate(MultiStep, 50, 10)
	if Text(a) != Text(b) || Text(a) == Text(c) {
		t.Error("equal seeds must give equal problems, different seeds different ones")
	}
	if _, err := Generate("nope", 1, 1); err == nil {
		t.Error("an unknown family was accepted")
	}
	var buf bytes.Buffer
	n, err := WriteJSONL(&buf, append(a, a...))
	if err != nil || n != 50-countDup(a) || strings.Count(buf.String(), "\n") != n {
		t.Errorf("WriteJSONL wrote %d (err %v), want the %d distinct questions", n, err, 50-countDup(a))
	}
}

func countDup(ps []Problem) int {
	seen, d := map[string]bool{}, 0
	for _, p := range ps {
		if seen[p.Question] {
			d++
		}
		seen[p.Question] = true
	}
	return d
}
