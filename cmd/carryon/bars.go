package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"carryon/coordinator"
	"carryon/internal/progress"
)

// counter is a lazily created progress bar over a known total: a bar
// redrawn in place on a terminal, plain lines otherwise.
type counter struct {
	w     io.Writer
	label string
	unit  string
	once  sync.Once
	bar   *progress.Bar
}

func newCounter(w io.Writer, label, unit string) *counter {
	return &counter{w: w, label: label, unit: unit}
}

// set records n of total done and ends the bar when n reaches total.
func (c *counter) set(n, total int) {
	c.once.Do(func() { c.bar = progress.New(c.w, c.label, int64(total), progress.Options{Unit: c.unit}) })
	c.bar.SetTotal(int64(total))
	c.bar.Set(int64(n))
	if n >= total {
		c.bar.Done()
	}
}

// waitLine prints "waiting for nodes: N joined (need M)" while a
// coordinator waits for its first nodes: at once, whenever N changes, and
// every 30 s otherwise.
type waitLine struct {
	w        io.Writer
	need     int
	last     int
	printed  time.Time
	finished bool
}

func (l *waitLine) update(p coordinator.Progress) {
	if l.finished {
		return
	}
	if !p.Waiting {
		l.finished = true
		if !l.printed.IsZero() {
			fmt.Fprintf(l.w, "leasing: %d nodes joined\n", p.Nodes)
		}
		return
	}
	if l.printed.IsZero() || p.Nodes != l.last || time.Since(l.printed) >= 30*time.Second {
		fmt.Fprintf(l.w, "waiting for nodes: %d joined (need %d)\n", p.Nodes, l.need)
		l.last, l.printed = p.Nodes, time.Now()
	}
}
