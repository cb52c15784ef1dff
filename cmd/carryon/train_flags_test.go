package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTrainZeroIsNotADefault checks that values a library would silently
// replace are refused on the command line, and that train reports what
// happened to the data file's records (here: one pair whose question is
// cut to fit, one question without an answer, an ignored field).
func TestTrainZeroIsNotADefault(t *testing.T) {
	for _, c := range []struct{ flag, want string }{
		{"--steps=0", "--steps 0: want at least 1"},
		{"--lr=0", "--lr 0: want a positive learning rate"},
		{"--batch=0", "--batch 0"},
		{"--gate-bias=30", "--gate-bias 30: want a value in [-20, 20]"},
		{"--alpha-grid=1,x", `"x" is not a finite number`},
	} {
		var out, errb bytes.Buffer
		if code := run([]string{"train", c.flag, "--out", filepath.Join(t.TempDir(), "a")}, &out, &errb); code == 0 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("train %s: exit %d, stderr %q; want an error containing %q", c.flag, code, errb.String(), c.want)
		}
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data.txt") // JSONL by content, whatever its name
	long := strings.Repeat("How many apples are there in all the baskets? ", 30)
	lines := `{"question": "` + long + `", "answer": "There are 4 apples.\n#### 4", "id": 1}` + "\n" +
		`{"question": "What is 2+2?"}` + "\n" +
		`{"question": "What is 3+3?", "answer": "#### 6"}` + "\n"
	if err := os.WriteFile(data, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"train", "--data", data, "--seq-len", "64", "--steps", "1", "--batch", "1", "--alpha-grid", "0,1",
		"--cache", filepath.Join(dir, "cache"), "--out", filepath.Join(dir, "a.safetensors")}, &out, &errb)
	if code != 0 {
		t.Fatalf("train: exit %d\n%s\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"jsonl: 3 records read, 2 used, 1 cut, 1 dropped", "without an answer", `field "id" ignored`, "its start was cut",
		"kept the last step: the data has no validation split"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("train output lacks %q:\n%s", want, out.String())
		}
	}
	// eval on the same data: a table by default, JSON with --json, and
	// no exact match when generation is skipped (not a measured zero).
	adaptor := filepath.Join(dir, "a.safetensors")
	out.Reset()
	errb.Reset()
	args := []string{"eval", "--data", data, "--adaptor", adaptor, "--cache", filepath.Join(dir, "cache"), "--no-generate", "--seq-len", "64"}
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("eval: exit %d\n%s", code, errb.String())
	}
	if !strings.Contains(out.String(), "not run") || !strings.Contains(out.String(), "base + adaptor") ||
		!strings.Contains(out.String(), "2 examples (1 records skipped: no question or no answer; 1 cut to --seq-len, the answer kept)") {
		t.Errorf("eval table:\n%s", out.String())
	}
	if !strings.Contains(errb.String(), "eval: 1 × prompt longer than --seq-len 64: its start was cut, the answer kept") ||
		!strings.Contains(errb.String(), "eval 100%") {
		t.Errorf("eval's stderr lacks the cut's reason or the progress:\n%s", errb.String())
	}
	out.Reset()
	if code := run(append(args, "--json"), &out, &errb); code != 0 || strings.Contains(out.String(), "exact_match") || !strings.Contains(out.String(), `"loss"`) {
		t.Errorf("eval --json --no-generate: exit %d, %s", code, out.String())
	}
}
