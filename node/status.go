package node

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Status is what `carryon node status` shows: the node's state and its
// totals since it started.
type Status struct {
	Peer         string       `json:"peer"`
	State        string       `json:"state"`                   // "running" or "paused"
	PausedReason string       `json:"paused_reason,omitempty"` // why, when paused
	PausedSince  *time.Time   `json:"paused_since,omitempty"`
	Started      time.Time    `json:"started"`
	Bases        []string     `json:"bases"`           // name (weights hash prefix)
	Limits       string       `json:"limits"`          // threads, job slots, memory, conditions
	Chunks       int64        `json:"chunks"`          // embedding jobs finished and acknowledged
	Tokens       int64        `json:"tokens"`          // tokens in those jobs
	ComputeSecs  float64      `json:"compute_seconds"` // time spent computing jobs (all slots summed)
	HandedBack   int64        `json:"handed_back"`     // chunks returned to the coordinator because of a pause
	TooLarge     int64        `json:"too_large"`       // chunks returned because they are over the memory limit
	Rejected     int64        `json:"rejected"`        // requests refused or not acknowledged
	TokensPerSec float64      `json:"tokens_per_second"`
	Current      []CurrentJob `json:"current"` // jobs computing now
}

// CurrentJob is a job the node is computing.
type CurrentJob struct {
	Job     string    `json:"job"`
	Chunk   string    `json:"chunk"` // chunk ID prefix
	Seqs    int       `json:"seqs"`
	Tokens  int       `json:"tokens"`
	Started time.Time `json:"started"`
}

// Status returns the node's state and totals.
func (n *Node) Status() Status {
	st := n.Stats()
	s := Status{Peer: n.h.ID().String(), State: "running", Started: n.ctl.started, Chunks: st.Jobs, Tokens: st.Tokens,
		ComputeSecs: time.Duration(n.ctl.computeNanos.Load()).Seconds(), HandedBack: n.ctl.handedBack.Load(), TooLarge: n.ctl.tooLarge.Load(),
		Rejected: st.Rejected, TokensPerSec: st.TokensPerSec, Current: []CurrentJob{}, Limits: n.limitsText()}
	for _, b := range n.bases {
		i := b.Info()
		s.Bases = append(s.Bases, i.Name+" ("+short(i.WeightsHash)+")")
	}
	sort.Strings(s.Bases)
	n.ctl.mu.Lock()
	if r := n.ctl.reasonLocked(); r != "" {
		since := n.ctl.since
		s.State, s.PausedReason, s.PausedSince = "paused", r, &since
	}
	for _, cj := range n.ctl.current {
		s.Current = append(s.Current, cj)
	}
	n.ctl.mu.Unlock()
	sort.Slice(s.Current, func(i, j int) bool { return s.Current[i].Started.Before(s.Current[j].Started) })
	return s
}

// limitsText says what the node may use and when it works.
func (n *Node) limitsText() string {
	parts := []string{fmt.Sprintf("%d threads", runtime.GOMAXPROCS(0)), fmt.Sprintf("%d job slots", cap(n.slots))}
	if n.cfg.MaxMemory > 0 {
		parts = append(parts, fmt.Sprintf("memory %d MiB", n.cfg.MaxMemory>>20))
	}
	n.ctl.mu.Lock()
	if n.ctl.conditions != "" {
		parts = append(parts, n.ctl.conditions)
	}
	n.ctl.mu.Unlock()
	return strings.Join(parts, "; ")
}
