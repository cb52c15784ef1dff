package main

import (
	"io"
	"sync"

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
