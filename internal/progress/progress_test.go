package progress

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

// fakeClock advances only when told.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock               { return &fakeClock{t: time.Unix(1e9, 0)} }

// work adds n units to b, each d after the one before.
func (c *fakeClock) work(b *Bar, n int, d time.Duration) {
	for range n {
		c.add(d)
		b.Add(1)
	}
}

// TestLinesWhenNotATerminal: a buffer is not a terminal, so the bar
// writes one plain line per tenth of the work, then nothing more at Done.
func TestLinesWhenNotATerminal(t *testing.T) {
	var buf bytes.Buffer
	clk := newClock()
	b := New(&buf, "embed", 1000, Options{Unit: "chunks", Now: clk.now})
	if b.Terminal() {
		t.Fatal("a bytes.Buffer taken for a terminal")
	}
	clk.work(b, 1000, time.Millisecond)
	b.Done()
	b.Done()
	out := buf.String()
	if strings.ContainsAny(out, "\r[") {
		t.Errorf("plain output holds terminal drawing: %q", out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 11 {
		t.Fatalf("%d lines, want 11 (0%%, 10%%, ..., 100%%):\n%s", len(lines), out)
	}
	if lines[0] != "embed   0% 1/1000 chunks 1e+03/s" || lines[10] != "embed 100% 1000/1000 chunks 1e+03/s" {
		t.Errorf("first and last lines %q, %q", lines[0], lines[10])
	}
	if !strings.HasPrefix(lines[5], "embed  50% 500/1000 chunks") {
		t.Errorf("line 5 = %q", lines[5])
	}
}

// TestLinesInterval: with an unknown total, a line comes at most every
// Interval while work goes on, and Done adds the final count.
func TestLinesInterval(t *testing.T) {
	var buf bytes.Buffer
	clk := newClock()
	b := New(&buf, "train", 0, Options{Mode: Lines, Unit: "steps", Interval: 10 * time.Second, Now: clk.now})
	clk.work(b, 25, time.Second)
	b.Done()
	want := "train 1 steps 1/s\ntrain 11 steps 1/s\ntrain 21 steps 1/s\ntrain 25 steps 1/s\n"
	if got := buf.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestTerminalRedraws: a forced terminal bar redraws in place (throttled
// by Redraw) and ends its line at Done.
func TestTerminalRedraws(t *testing.T) {
	var buf bytes.Buffer
	clk := newClock()
	b := New(&buf, "fetch", 10, Options{Mode: Terminal, Width: 10, Now: clk.now})
	for i := range 10 {
		if i == 5 {
			clk.add(time.Second) // the only update after a pause: drawn
		}
		b.Add(1)
	}
	b.Done()
	want := "\rfetch [=>        ]  10% 1/10" + "\rfetch [======>   ]  60% 6/10 6/s" + "\rfetch [==========] 100% 10/10 10/s\n"
	if got := buf.String(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestIsTerminal(t *testing.T) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for name, f := range map[string]*os.File{"/dev/null (a character device)": null, "a pipe": w} {
		if IsTerminal(f) {
			t.Errorf("%s taken for a terminal", name)
		}
		if New(f, "x", 1, Options{}).Terminal() {
			t.Errorf("a bar on %s draws in place", name)
		}
	}
	if IsTerminal(&bytes.Buffer{}) {
		t.Error("a buffer taken for a terminal")
	}
}
