package demo

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemo runs the whole in-process loop, smaller than the real demo, and
// checks its report line by line.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole loop")
	}
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := Run(ctx, Options{Dir: t.TempDir(), Examples: 240, Steps: 60, Out: &out}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	report := out.String()
	for _, want := range []string{"base:", "pretrained by carryon", "swarm:", "private swarm", "embed:", "train:", "eval:", "adaptor: ", "pull:", "match", "done in"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	m := regexp.MustCompile(`train:  loss ([0-9.]+) → ([0-9.]+)`).FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("no loss summary:\n%s", report)
	}
	first, _ := strconv.ParseFloat(m[1], 64)
	last, _ := strconv.ParseFloat(m[2], 64)
	if !(last < first) {
		t.Errorf("loss did not fall: %v → %v", first, last)
	}
	if !regexp.MustCompile(`adaptor: b[a-z2-7]{58} `).MatchString(report) {
		t.Errorf("no CIDv1 in the report:\n%s", report)
	}
}

func TestDefaultDataIsStable(t *testing.T) {
	a, b := DefaultData(50), DefaultData(50)
	if string(a) != string(b) {
		t.Fatal("DefaultData is not deterministic")
	}
	if n := strings.Count(string(a), "\n"); n != 50 {
		t.Fatalf("%d lines, want 50", n)
	}
}
