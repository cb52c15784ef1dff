package node

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"carryon/protocol"
)

// Pausing. A paused node keeps its connections but takes no work:
//
//   - its adverts say FreeSlots 0, at once and then every AdvertInterval,
//     so a coordinator sees it as busy rather than gone;
//   - a request that arrives, and every job still waiting for a slot, is
//     handed back at once with an Overloaded error ("node paused ..."),
//     which the coordinator requeues without counting a failed attempt;
//   - jobs already computing finish, are acknowledged and counted (a
//     forward pass cannot be interrupted, and dropping it would throw the
//     work away).
//
// So no leased chunk is lost or done twice across a pause: each one is
// either finished or explicitly handed back. Pausing and resuming both
// republish the advert at once.

// control is the node's pause state, memory budget and job accounting.
type control struct {
	mu      sync.Mutex
	manual  string        // reason of a Pause call ("" = none)
	auto    string        // reason from the conditions (Govern; "" = none)
	since   time.Time     // when the current pause began
	wake    chan struct{} // closed when the node pauses (queued jobs hand back)
	changed chan struct{} // signalled on pause and resume (advert loop)

	conditions string // Conditions.String() of Govern ("" = none)

	mem       *semaphore.Weighted // nil without Config.MaxMemory
	memBudget int64               // bytes jobs may use (MaxMemory minus the weights)

	current                            map[*protocol.EmbedRequest]CurrentJob
	handedBack, tooLarge, computeNanos atomic.Int64
	started                            time.Time
}

func (c *control) init() {
	c.wake = make(chan struct{})
	c.changed = make(chan struct{}, 1)
	c.current = map[*protocol.EmbedRequest]CurrentJob{}
	c.started = time.Now()
}

// reasonLocked is why the node is paused, or "".
func (c *control) reasonLocked() string {
	if c.manual != "" {
		return c.manual
	}
	return c.auto
}

// Pause stops the node taking work (see above) until Resume; reason is
// shown in logs and Status ("paused by the user", "on battery"). It takes
// precedence over the conditions of Govern.
func (n *Node) Pause(reason string) {
	if reason == "" {
		reason = "paused"
	}
	n.setPause(&n.ctl.manual, reason)
}

// Resume undoes Pause. The node still stays paused while a condition of
// Govern says so.
func (n *Node) Resume() { n.setPause(&n.ctl.manual, "") }

// setPause sets one of the two pause reasons and applies the change.
func (n *Node) setPause(which *string, reason string) {
	c := &n.ctl
	c.mu.Lock()
	before := c.reasonLocked()
	*which = reason
	after := c.reasonLocked()
	pausedFor := time.Since(c.since)
	switch {
	case before == "" && after != "":
		c.since = time.Now()
		close(c.wake) // queued jobs hand their chunks back
	case before != "" && after == "":
		c.wake = make(chan struct{})
	}
	if (before == "") != (after == "") {
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
	c.mu.Unlock()
	switch {
	case before == "" && after != "":
		n.log.Info("node paused; running chunks finish, queued and new ones are handed back", "reason", after)
	case before != "" && after == "":
		n.log.Info("node resumed", "paused_for", pausedFor.Round(time.Second))
	case before != after:
		n.log.Info("node still paused", "reason", after)
	}
}

// pauseState returns the pause reason ("" when running) and the channel
// closed when the node pauses.
func (n *Node) pauseState() (string, <-chan struct{}) {
	n.ctl.mu.Lock()
	defer n.ctl.mu.Unlock()
	return n.ctl.reasonLocked(), n.ctl.wake
}

// handBack is the error returning a chunk to the coordinator because the
// node is paused; it says so in the log.
func (n *Node) handBack(reason string, log *slog.Logger) error {
	n.ctl.handedBack.Add(1)
	log.Info("chunk handed back", "why", "node paused: "+reason)
	return protocol.Errorf(protocol.KindOverloaded, "node paused (%s): chunk handed back", reason)
}

// admit waits for a job slot and the job's memory; it fails with an
// Overloaded error when the node is paused (now or while waiting) or the
// queue is full, and with a TooLarge one when the chunk can never fit in
// the memory limit (the coordinator then leases it, and chunks as large,
// to other nodes). On success
// the caller must call n.leave(req).
func (n *Node) admit(ctx context.Context, req *protocol.EmbedRequest, b Base, log *slog.Logger) error {
	reason, wake := n.pauseState()
	if reason != "" {
		return n.handBack(reason, log)
	}
	need := jobBytes(b, req)
	if n.ctl.mem != nil && need > n.ctl.memBudget {
		n.ctl.tooLarge.Add(1)
		err := protocol.Errorf(protocol.KindTooLarge, "chunk of %d tokens needs about %d MiB, over this node's memory limit (%d MiB left after the weights)",
			req.Tokens(), need>>20, n.ctl.memBudget>>20)
		log.Warn("chunk handed back: over this node's memory limit", "why", err.Msg, "hint", "raise --max-memory to take chunks this large")
		return err
	}
	if n.waiting.Add(1) > int64(n.cfg.MaxQueue) {
		n.waiting.Add(-1)
		return protocol.Errorf(protocol.KindOverloaded, "all %d job slots busy and %d jobs queued", cap(n.slots), n.cfg.MaxQueue)
	}
	defer n.waiting.Add(-1)
	select {
	case n.slots <- struct{}{}:
	default:
		log.Debug("chunk queued: every slot is busy", "queued", n.waiting.Load())
		select {
		case n.slots <- struct{}{}:
		case <-wake:
			reason, _ := n.pauseState()
			return n.handBack(reason, log)
		case <-ctx.Done():
			return protocol.Errorf(protocol.KindOverloaded, "no job slot before the deadline")
		}
	}
	if n.ctl.mem != nil {
		if err := n.ctl.mem.Acquire(ctx, need); err != nil {
			n.release()
			return protocol.Errorf(protocol.KindOverloaded, "no memory for the chunk before the deadline")
		}
	}
	n.ctl.mu.Lock()
	reason = n.ctl.reasonLocked()
	if reason == "" {
		n.ctl.current[req] = CurrentJob{Job: req.JobID, Chunk: short(req.ChunkID), Seqs: len(req.Seqs),
			Tokens: req.Tokens(), Started: time.Now()}
	}
	n.ctl.mu.Unlock()
	if reason != "" { // paused while the slot was being taken
		n.leaveSlot(need)
		return n.handBack(reason, log)
	}
	return nil
}

// leave frees what admit took and adds the job's compute time.
func (n *Node) leave(b Base, req *protocol.EmbedRequest) {
	n.ctl.mu.Lock()
	cj := n.ctl.current[req]
	delete(n.ctl.current, req)
	n.ctl.mu.Unlock()
	n.ctl.computeNanos.Add(int64(time.Since(cj.Started)))
	n.leaveSlot(jobBytes(b, req))
}

func (n *Node) leaveSlot(need int64) {
	if n.ctl.mem != nil {
		n.ctl.mem.Release(need)
	}
	n.release()
}
