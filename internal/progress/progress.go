// Package progress reports the progress of long commands: a bar redrawn in
// place when the output is a terminal, and otherwise plain log lines (one
// per tenth of the work, at most one per Interval), so that redirected
// output and CI logs stay readable.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Mode picks how a Bar draws.
type Mode int

const (
	Auto     Mode = iota // Terminal if the writer is a terminal, else Lines
	Terminal             // a bar redrawn in place with \r
	Lines                // plain lines
)

// Options tune a Bar; zero values take the defaults.
type Options struct {
	Mode Mode
	// Unit names what is counted ("chunks", "tokens"); default "".
	Unit string
	// Width is the bar's width in cells. Default 30.
	Width int
	// Redraw is the shortest time between two terminal redraws. Default
	// 100 ms; negative: redraw on every update.
	Redraw time.Duration
	// Interval is the longest silence between two plain lines while work
	// progresses. Default 10 s.
	Interval time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Bar reports progress towards a total. Its methods are safe for
// concurrent use.
type Bar struct {
	w     io.Writer
	label string
	opt   Options
	term  bool

	mu       sync.Mutex
	n, total int64
	start    time.Time
	last     time.Time // last draw
	lastTick int64     // tenths of the total reported in Lines mode
	drawn    int       // width of the last terminal line
	printed  int64     // n on the last plain line
	lastLine string    // the last terminal line
	done     bool
}

// New returns a bar for label counting to total (0 or less: unknown) on w.
func New(w io.Writer, label string, total int64, opt Options) *Bar {
	if opt.Width <= 0 {
		opt.Width = 30
	}
	if opt.Redraw == 0 {
		opt.Redraw = 100 * time.Millisecond
	}
	if opt.Interval <= 0 {
		opt.Interval = 10 * time.Second
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	term := opt.Mode == Terminal || opt.Mode == Auto && IsTerminal(w)
	now := opt.Now()
	return &Bar{w: w, label: label, opt: opt, term: term, total: total, start: now, lastTick: -1}
}

// IsTerminal reports whether w is a terminal (a character device that
// answers terminal ioctls, so /dev/null is not one).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	return isTTY(f)
}

// Terminal reports whether the bar draws in place.
func (b *Bar) Terminal() bool { return b.term }

// Set records n units done.
func (b *Bar) Set(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n = n
	b.update(false)
}

// Add records d more units done.
func (b *Bar) Add(d int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n += d
	b.update(false)
}

// SetTotal changes the total (work found along the way).
func (b *Bar) SetTotal(total int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total = total
	b.update(false)
}

// Done draws the final state and ends the line. Later calls do nothing.
func (b *Bar) Done() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.update(true)
	b.done = true
	if b.term {
		fmt.Fprintln(b.w)
	}
}

func (b *Bar) update(final bool) {
	if b.done {
		return
	}
	now := b.opt.Now()
	if b.term {
		if !final && b.drawn > 0 && b.opt.Redraw > 0 && now.Sub(b.last) < b.opt.Redraw {
			return
		}
		line := b.render(now, true)
		if line == b.lastLine {
			return
		}
		pad := ""
		if n := b.drawn - len(line); n > 0 {
			pad = strings.Repeat(" ", n) // erase the rest of a longer line
		}
		fmt.Fprintf(b.w, "\r%s%s", line, pad)
		b.drawn, b.last, b.lastLine = len(line), now, line
		return
	}
	tick := int64(-1)
	if b.total > 0 {
		tick = min(b.n, b.total) * 10 / b.total
	}
	switch {
	case final:
		if !b.last.IsZero() && b.printed == b.n {
			return // the last line already says it
		}
	case tick > b.lastTick && tick >= 0:
	case b.lastTick == -1 && b.last.IsZero(): // the first update
	case now.Sub(b.last) >= b.opt.Interval:
	default:
		return
	}
	if tick > b.lastTick {
		b.lastTick = tick
	}
	fmt.Fprintln(b.w, b.render(now, false))
	b.last, b.printed = now, b.n
}

// render formats "label [=====>    ]  45% 450/1000 chunks 12.3/s" (the bar
// only on a terminal).
func (b *Bar) render(now time.Time, bar bool) string {
	var s strings.Builder
	s.WriteString(b.label)
	unit := ""
	if b.opt.Unit != "" {
		unit = " " + b.opt.Unit
	}
	if b.total > 0 {
		frac := float64(min(b.n, b.total)) / float64(b.total)
		if bar {
			full := int(frac * float64(b.opt.Width))
			s.WriteString(" [")
			s.WriteString(strings.Repeat("=", full))
			if full < b.opt.Width {
				s.WriteString(">")
				s.WriteString(strings.Repeat(" ", b.opt.Width-full-1))
			}
			s.WriteString("]")
		}
		fmt.Fprintf(&s, " %3.0f%% %d/%d%s", 100*frac, b.n, b.total, unit)
	} else {
		fmt.Fprintf(&s, " %d%s", b.n, unit)
	}
	if el := now.Sub(b.start).Seconds(); el > 0 && b.n > 0 {
		fmt.Fprintf(&s, " %.3g/s", float64(b.n)/el)
	}
	return s.String()
}
