package node

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Conditions say when a volunteer's machine may work; Govern pauses and
// resumes the node as they change. The zero value allows work at any time
// except on battery power (where the OS tells).
type Conditions struct {
	// Schedule lists local-time windows in which the node works; empty:
	// any time.
	Schedule []Window
	// IdleFor: work only after no user input for this long (0: regardless
	// of the user). Needs an OS that tells (Probe.IdleTime); Govern fails
	// where none does.
	IdleFor time.Duration
	// AllowBattery lets the node work on battery power; by default it
	// pauses while the OS says the machine runs on battery.
	AllowBattery bool
	// Poll is how often the conditions are checked. Default 15 s.
	Poll time.Duration
}

// Validate reports a field out of bounds.
func (c Conditions) Validate() error {
	switch {
	case c.IdleFor < 0:
		return fmt.Errorf("node.Conditions.IdleFor: %v is negative", c.IdleFor)
	case c.Poll < 0:
		return fmt.Errorf("node.Conditions.Poll: %v is negative", c.Poll)
	}
	return nil
}

// Active reports whether c can ever forbid work (the zero value allows
// work except on battery; AllowBattery with no schedule and no idle rule
// never pauses).
func (c Conditions) Active() bool {
	return len(c.Schedule) > 0 || c.IdleFor > 0 || !c.AllowBattery
}

// String describes c for a volunteer: "schedule 22:00-07:00, only after
// 5m idle, pauses on battery".
func (c Conditions) String() string {
	var parts []string
	if len(c.Schedule) > 0 {
		var ws []string
		for _, w := range c.Schedule {
			ws = append(ws, w.String())
		}
		parts = append(parts, "schedule "+strings.Join(ws, ","))
	}
	if c.IdleFor > 0 {
		parts = append(parts, fmt.Sprintf("only after %v idle", c.IdleFor))
	}
	if !c.AllowBattery {
		parts = append(parts, "pauses on battery")
	}
	return strings.Join(parts, ", ")
}

// Window is a daily span of local time [From, To), in minutes after
// midnight; To < From wraps past midnight (22:00-07:00).
type Window struct{ From, To int }

// ParseSchedule reads "HH:MM-HH:MM[,HH:MM-HH:MM...]".
func ParseSchedule(s string) ([]Window, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var ws []Window
	for _, part := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(part), "-")
		if !ok {
			return nil, fmt.Errorf("schedule %q: want HH:MM-HH:MM windows separated by commas", s)
		}
		from, err1 := parseClock(a)
		to, err2 := parseClock(b)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("schedule %q: %w", s, err)
		}
		if from == to {
			return nil, fmt.Errorf("schedule %q: window %s is empty", s, part)
		}
		ws = append(ws, Window{from, to})
	}
	return ws, nil
}

func parseClock(s string) (int, error) {
	t, err := time.Parse("15:04", strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not a time of day HH:MM", s)
	}
	return t.Hour()*60 + t.Minute(), nil
}

func (w Window) String() string {
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.From/60, w.From%60, w.To/60, w.To%60)
}

// contains reports whether local time t falls in w.
func (w Window) contains(t time.Time) bool {
	m := t.Hour()*60 + t.Minute()
	if w.From < w.To {
		return m >= w.From && m < w.To
	}
	return m >= w.From || m < w.To
}

// Probe asks the OS about the user and the power supply (SystemProbe for
// the real one).
type Probe interface {
	// IdleTime is how long since the last user input; an error where the OS
	// cannot tell.
	IdleTime() (time.Duration, error)
	// OnBattery reports whether the machine runs on battery; false with an
	// error where the OS cannot tell.
	OnBattery() (bool, error)
}

// Why returns the reason conditions c forbid work at time now, or "".
func (c Conditions) Why(now time.Time, p Probe) string {
	if len(c.Schedule) > 0 {
		in := false
		var names []string
		for _, w := range c.Schedule {
			in = in || w.contains(now)
			names = append(names, w.String())
		}
		if !in {
			return "outside the schedule " + strings.Join(names, ",")
		}
	}
	if !c.AllowBattery {
		if on, err := p.OnBattery(); err == nil && on {
			return "on battery power"
		}
	}
	if c.IdleFor > 0 {
		idle, err := p.IdleTime()
		if err != nil {
			return "cannot tell whether the user is idle: " + err.Error()
		}
		if idle < c.IdleFor {
			return fmt.Sprintf("user active (idle %v of %v)", idle.Round(time.Second), c.IdleFor)
		}
	}
	return ""
}

// Govern applies c now and then every c.Poll until the node closes,
// pausing the node while a condition forbids work and resuming it after (a
// Pause by the user stays); the node's adverts say FreeSlots 0 while it is
// paused. Call it once, before Start (so that the node's first advert
// already obeys c: a node outside its schedule never offers free slots) or
// after it; the polling begins at Start. It fails at once when c is out of
// bounds or c.IdleFor is set and p cannot tell idle time.
func (n *Node) Govern(c Conditions, p Probe) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.Poll == 0 {
		c.Poll = 15 * time.Second
	}
	if c.IdleFor > 0 {
		if _, err := p.IdleTime(); err != nil {
			return fmt.Errorf("node.Govern: working only when the user is idle needs the OS to report idle time: %w", err)
		}
	}
	n.mu.Lock()
	ok := !n.closed && n.gov.poll == nil
	if ok {
		n.gov.poll = func() { n.setPause(&n.ctl.auto, c.Why(time.Now(), p)) }
		n.gov.every = c.Poll
	}
	n.mu.Unlock()
	if !ok {
		return errors.New("node.Govern: call once, before Close")
	}
	n.ctl.mu.Lock()
	n.ctl.conditions = c.String()
	n.ctl.mu.Unlock()
	n.gov.poll()
	n.mu.Lock()
	if n.started && !n.closed {
		n.startGovern()
	}
	n.mu.Unlock()
	return nil
}

// startGovern starts Govern's polling loop unless it runs; the loop ends
// with the node's context (Close). Called with n.mu held, by Start or by
// a Govern after it.
func (n *Node) startGovern() {
	if n.gov.done != nil {
		return
	}
	n.gov.done = make(chan struct{})
	go func() {
		defer close(n.gov.done)
		t := time.NewTicker(n.gov.every)
		defer t.Stop()
		for {
			select {
			case <-n.ctx.Done():
				return
			case <-t.C:
				n.gov.poll()
			}
		}
	}()
}
