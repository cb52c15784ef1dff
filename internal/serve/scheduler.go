package serve

// The scheduler hands out worker slots: at most Workers generations run at
// once, up to MaxQueue requests wait, and waiting requests are served
// round-robin per client (a client's own requests in arrival order), so
// that one client sending many requests cannot starve another.

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// errClosed is the answer once the server is closed.
var errClosed = errors.New("the server is shutting down")

// ticket is one request's place in the queue.
type ticket struct {
	client string
	ready  chan struct{} // closed when the slot is granted
}

// schedOp is a message to the scheduler goroutine.
type schedOp struct {
	kind  int // opEnqueue, opCancel, opRelease
	t     *ticket
	reply chan schedReply // nil for opRelease
}

const (
	opEnqueue = iota // take a slot now or queue t; reply err (errBusy when full)
	opCancel         // t's client is gone: drop t; reply granted (t got its slot meanwhile)
	opRelease        // a running generation ended
)

type schedReply struct {
	err     error
	granted bool
}

// scheduler's state belongs to its run goroutine; the atomics mirror it
// for metrics and tests.
type scheduler struct {
	workers, maxQueue int
	ops               chan schedOp
	done              chan struct{}
	closeOnce         sync.Once

	queued  atomic.Int64 // tickets waiting
	running atomic.Int64 // slots held

	// hook, when set (tests), runs on the scheduler goroutine after each
	// change: "queued" or "granted", with the ticket's client.
	hook func(event, client string)
}

func newScheduler(workers, maxQueue int, hook func(event, client string)) *scheduler {
	s := &scheduler{workers: workers, maxQueue: maxQueue, ops: make(chan schedOp), done: make(chan struct{}), hook: hook}
	go s.run()
	return s
}

// run owns the queue: per client a FIFO of tickets, and the clients with
// waiting tickets in the order they are served (front first; a served
// client with more tickets goes to the back).
func (s *scheduler) run() {
	var (
		running int
		waiting int
		queues  = map[string][]*ticket{}
		order   []string
	)
	event := func(ev, client string) {
		s.queued.Store(int64(waiting))
		s.running.Store(int64(running))
		if s.hook != nil {
			s.hook(ev, client)
		}
	}
	grant := func() {
		for running < s.workers && len(order) > 0 {
			c := order[0]
			order = order[1:]
			t := queues[c][0]
			queues[c] = queues[c][1:]
			if len(queues[c]) == 0 {
				delete(queues, c)
			} else {
				order = append(order, c)
			}
			waiting--
			running++
			close(t.ready)
			event("granted", c)
		}
	}
	for {
		var op schedOp
		select {
		case op = <-s.ops:
		case <-s.done:
			return
		}
		switch op.kind {
		case opEnqueue:
			c := op.t.client
			switch {
			case running < s.workers && waiting == 0:
				running++
				close(op.t.ready)
				op.reply <- schedReply{}
				event("granted", c)
			case waiting >= s.maxQueue:
				op.reply <- schedReply{err: errBusy}
				event("busy", c)
			default:
				if len(queues[c]) == 0 {
					order = append(order, c)
				}
				queues[c] = append(queues[c], op.t)
				waiting++
				op.reply <- schedReply{}
				event("queued", c)
			}
		case opCancel:
			c, found := op.t.client, false
			q := queues[c]
			for i, t := range q {
				if t == op.t {
					queues[c] = append(q[:i:i], q[i+1:]...)
					found = true
					break
				}
			}
			if found {
				waiting--
				if len(queues[c]) == 0 {
					delete(queues, c)
					for i, o := range order {
						if o == c {
							order = append(order[:i:i], order[i+1:]...)
							break
						}
					}
				}
				event("cancelled", c)
			}
			op.reply <- schedReply{granted: !found}
		case opRelease:
			running--
			event("released", "")
			grant()
		}
	}
}

// send delivers op unless the scheduler has stopped.
func (s *scheduler) send(op schedOp) error {
	select {
	case s.ops <- op:
		return nil
	case <-s.done:
		return errClosed
	}
}

// acquire waits for a worker slot for client, in its turn, unless the
// queue is full (errBusy) or ctx ends first. release gives the slot back.
func (s *scheduler) acquire(ctx context.Context, client string) (release func(), err error) {
	t := &ticket{client: client, ready: make(chan struct{})}
	reply := make(chan schedReply, 1)
	if err := s.send(schedOp{kind: opEnqueue, t: t, reply: reply}); err != nil {
		return nil, err
	}
	if r := <-reply; r.err != nil {
		return nil, r.err
	}
	release = func() { s.send(schedOp{kind: opRelease}) }
	select {
	case <-t.ready:
		return release, nil
	case <-ctx.Done():
	case <-s.done:
		return nil, errClosed
	}
	if err := s.send(schedOp{kind: opCancel, t: t, reply: reply}); err != nil {
		return nil, err
	}
	if r := <-reply; r.granted { // granted before the cancel arrived
		release()
	}
	return nil, ctx.Err()
}

// close stops the scheduler: waiting and later acquires fail.
func (s *scheduler) close() { s.closeOnce.Do(func() { close(s.done) }) }
