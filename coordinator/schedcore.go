// The scheduler's core: which node gets which chunk, indexed so that each
// event costs O(log n) in the nodes and chunks. It does no I/O: time is
// passed in and leases are started through a callback, so the loop drives
// it with real hosts and BenchmarkSimSwarm drives it in virtual time.

package coordinator

import (
	"math"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/protocol"
)

// sched is the scheduler's state, owned by the loop's goroutine.
//
// Indexes (each kept current by touch, which every change to a node's
// leases, speed, backoff, cap, advert or ban is followed by):
//   - ready: eligible nodes with a spare lease slot, by the expected
//     finish time of one more chunk, (queued tokens + unit) / speed;
//     nodes of unknown speed after all others, fewest queued first;
//   - idle: eligible nodes without a lease, fastest first (the tail's
//     speculative duplicates go there);
//   - backoff: nodes waiting out a backoff, by its end;
//   - late: leases in flight, by when they become overdue (twice their
//     expected time);
//   - pending: a deque of chunks to lease (failures go to the front);
//     reservedQ holds chunks set aside for the node that offered their
//     result, until the reservation ends.
//
// Eligibility also depends on time (NodeTTL) and on the connection, which
// change without an event: the heaps check their top lazily and re-file
// a node that no longer fits. The median speed (which scales each node's
// cap) is recomputed at most once a second, an O(n log n) pass that
// re-files every node; between refreshes caps use the last median.
type sched struct {
	cfg     Config
	nodes   map[peer.ID]*nodeState
	pending deque
	// reservedQ: chunks reserved for another node, set aside until
	// their reservation ends.
	reservedQ deque
	verifyQ   []*chunkState // chunks waiting for a further opinion
	typical   time.Duration // EWMA of completed lease durations
	started   bool          // leasing began (MinNodes was reached)
	// unit is the tokens of a typical chunk, the ready heap's unit of
	// work (fixed per job so that keys change only with their node).
	unit        float64
	ready       iheap[*nodeState]
	idle        iheap[*nodeState]
	backoff     iheap[*nodeState]
	late        iheap[*lease]
	offering    map[*nodeState]bool // nodes with offered chunks to lease back
	median      float64             // median speed of eligible nodes, tokens/s
	medianAt    time.Time
	leasedN     int // leases in flight
	speculative int
	// connected reports whether a peer has a live connection (nil:
	// always, as in the simulation).
	connected func(peer.ID) bool
}

func newSched(cfg Config, connected func(peer.ID) bool) sched {
	return sched{cfg: cfg, nodes: map[peer.ID]*nodeState{}, offering: map[*nodeState]bool{}, connected: connected,
		ready:   newHeap(readyLess, func(s *nodeState) *int { return &s.readyPos }),
		idle:    newHeap(idleLess, func(s *nodeState) *int { return &s.idlePos }),
		backoff: newHeap(func(a, b *nodeState) bool { return a.backoff.Before(b.backoff) }, func(s *nodeState) *int { return &s.backPos }),
		late: newHeap(func(a, b *lease) bool { return a.overdueAt.Before(b.overdueAt) },
			func(ls *lease) *int { return &ls.latePos })}
}

// readyLess orders the ready heap: earliest expected finish of one more
// chunk first, unknown speeds last, then by peer ID (deterministic).
func readyLess(a, b *nodeState) bool {
	ka, kb := a.finishKey(), b.finishKey()
	if ka != kb {
		return ka < kb
	}
	if a.queued != b.queued {
		return a.queued < b.queued
	}
	return a.id < b.id
}

// idleLess orders the idle heap: unknown speed first (it may be fast),
// then fastest first, then by peer ID.
func idleLess(a, b *nodeState) bool {
	sa, sb := a.speed(), b.speed()
	if (sa == 0) != (sb == 0) {
		return sa == 0
	}
	if sa != sb {
		return sa > sb
	}
	return a.id < b.id
}

// finishKey is the ready heap's key: seconds until one more chunk of
// unit tokens would be done at the node's speed (+Inf: speed unknown).
func (n *nodeState) finishKey() float64 {
	sp := n.speed()
	if sp <= 0 {
		return math.Inf(1)
	}
	return (float64(n.queued) + n.unit) / sp
}

// add registers a node with the indexes (not yet eligible: no advert).
func (q *sched) add(s *nodeState) {
	s.readyPos, s.idlePos, s.backPos = -1, -1, -1
	s.unit = q.unit
	q.nodes[s.id] = s
}

// observe files a node's advert. fit: it serves the job's base and codec.
// FreeSlots is read as the room beyond our leases in flight: the node gets
// at most those plus FreeSlots. So FreeSlots 0 on a node without our
// leases (paused, or busy with other work) means no lease until an advert
// says otherwise; on a node full of our leases it keeps that many, and
// each of them that fails (a paused node hands queued ones back) lowers
// the limit (shrink).
func (q *sched) observe(s *nodeState, a *protocol.Advert, fit bool, now time.Time) {
	s.advert, s.seen, s.fit = a, now, fit
	s.slots, s.full = len(s.leases)+a.FreeSlots, a.FreeSlots == 0
	q.touch(s, now)
}

// shrink: a lease of s ended without a result. If its last advert said
// FreeSlots 0, the slot it held is not given again.
func (q *sched) shrink(s *nodeState, now time.Time) {
	if s.full {
		s.slots = min(s.slots, len(s.leases))
		q.touch(s, now)
	}
}

func (q *sched) eligible(s *nodeState, now time.Time) bool {
	return !s.banned && s.advert != nil && s.fit && now.Sub(s.seen) < q.cfg.NodeTTL &&
		(q.connected == nil || q.connected(s.id))
}

// eligibleCount is how many nodes are eligible now (the job's joined
// nodes, as status and the job announcement report them).
func (q *sched) eligibleCount(now time.Time) int {
	n := 0
	for _, s := range q.nodes {
		if q.eligible(s, now) {
			n++
		}
	}
	return n
}

// capOf returns a node's in-flight cap: LeasesPerNode scaled by its speed
// relative to the median ready node (so faster nodes hold more chunks),
// within [1, 4·LeasesPerNode], and no more than its overload feedback
// (aimd) allows.
func (q *sched) capOf(s *nodeState, median float64) int {
	c := q.cfg.LeasesPerNode
	if sp := s.speed(); sp > 0 && median > 0 {
		c = int(float64(q.cfg.LeasesPerNode)*sp/median + 0.5)
	}
	return max(1, min(c, 4*q.cfg.LeasesPerNode, s.aimd))
}

// capacity is how many leases s may hold now: its cap, and no more than
// its advert leaves room for.
func (q *sched) capacity(s *nodeState) int {
	c := q.capOf(s, q.median)
	if s.advert != nil {
		c = min(c, s.slots)
	}
	return c
}

// spare reports whether s can take a lease now.
func (q *sched) spare(s *nodeState, now time.Time) bool {
	return q.eligible(s, now) && !now.Before(s.backoff) && len(s.leases) < q.capacity(s)
}

// touch re-files s in the indexes after anything they depend on changed:
// O(log n).
func (q *sched) touch(s *nodeState, now time.Time) {
	ok := q.eligible(s, now)
	if ok && now.Before(s.backoff) {
		q.backoff.set(s)
		ok = false
	} else {
		q.backoff.remove(s)
	}
	if ok && len(s.leases) < q.capacity(s) {
		q.ready.set(s)
	} else {
		q.ready.remove(s)
	}
	if ok && len(s.leases) == 0 && q.capacity(s) > 0 {
		q.idle.set(s)
	} else {
		q.idle.remove(s)
	}
}

// top returns the ready node that finishes a chunk soonest, re-filing
// the ones at the top that no longer fit (nil: none).
func (q *sched) top(now time.Time) *nodeState {
	for q.ready.len() > 0 {
		s := q.ready.peek()
		if q.spare(s, now) {
			return s
		}
		q.touch(s, now)
		if q.ready.has(s) && q.ready.peek() == s { // changed in between: take it out
			q.ready.remove(s)
		}
	}
	return nil
}

// refresh ends backoffs that are over, releases expired reservations and,
// once a second, recomputes the median speed and re-files every node.
func (q *sched) refresh(now time.Time) {
	for q.backoff.len() > 0 && !now.Before(q.backoff.peek().backoff) {
		q.touch(q.backoff.pop(), now)
	}
	for q.reservedQ.len() > 0 && !now.Before(q.reservedQ.front().reservedUntil) {
		q.pending.pushBack(q.reservedQ.popFront())
	}
	if now.Sub(q.medianAt) < time.Second && !q.medianAt.IsZero() {
		return
	}
	q.medianAt = now
	speeds := make([]float64, 0, len(q.nodes))
	for _, s := range q.nodes {
		if sp := s.speed(); sp > 0 && q.eligible(s, now) {
			speeds = append(speeds, sp)
		}
	}
	median := 0.0
	if len(speeds) > 0 {
		slices.Sort(speeds)
		median = speeds[len(speeds)/2]
	}
	if median == q.median {
		return
	}
	q.median = median
	for _, s := range q.nodes {
		q.touch(s, now)
	}
}

// setMedian recomputes the median at once (a test's or the start's
// measurement, not waiting for the next second).
func (q *sched) setMedian(now time.Time) {
	q.medianAt = time.Time{}
	q.refresh(now)
}

// deadline sizes a lease: the node's queued tokens plus this chunk's at
// its speed (measured, else advertised, else the swarm's typical lease
// time), times 4, plus half of MinLeaseTimeout, clamped to
// [MinLeaseTimeout, LeaseTimeout].
func (q *sched) deadline(s *nodeState, tokens int) (expect, timeout time.Duration) {
	if sp := s.speed(); sp > 0 {
		expect = time.Duration(float64(s.queued+tokens) / sp * float64(time.Second))
	} else {
		expect = q.typical
	}
	if expect <= 0 {
		return 0, q.cfg.LeaseTimeout
	}
	timeout = 4*expect + q.cfg.MinLeaseTimeout/2
	return expect, min(max(timeout, q.cfg.MinLeaseTimeout), q.cfg.LeaseTimeout)
}

// assign leases work to ready nodes: chunks a node offered go back to it,
// then second opinions (they hold results in memory), then pending chunks,
// each to the node that would finish it soonest within its cap; with
// nothing left to hand out, it duplicates overdue leases onto idle nodes
// at least as fast (the tail of the job), earliest overdue first.
// launch starts a lease; self, if not nil, takes a chunk for the
// coordinator's own second opinion (false: busy, try later). Each lease
// started costs O(log n).
func (q *sched) assign(now time.Time, launch func(*lease), self func(*chunkState) bool) {
	q.refresh(now)
	if !q.started && q.ready.len() < q.cfg.MinNodes {
		return
	}
	// Chunks a node already holds results for go back to it.
	for s := range q.offering {
		for len(s.offers) > 0 && q.spare(s, now) {
			cs := s.offers[0]
			s.offers = s.offers[1:]
			if cs.phase == phPending {
				q.start(s, cs, false, false, now, launch)
			}
		}
		if len(s.offers) == 0 {
			delete(q.offering, s)
		}
	}

	// Second opinions.
	kept := q.verifyQ[:0]
	for i, cs := range q.verifyQ {
		if len(cs.leases) > 0 {
			cs.inVerifyQ = false
			continue // an opinion is on its way; finish re-queues on failure
		}
		if self != nil {
			if self(cs) {
				cs.inVerifyQ = false
			} else {
				kept = append(kept, cs)
			}
			continue
		}
		if q.top(now) == nil { // nobody to ask: keep the rest as they are
			kept = append(kept, q.verifyQ[i:]...)
			break
		}
		pick := q.pickFor(cs, now)
		if pick == nil {
			kept = append(kept, cs)
			continue
		}
		cs.inVerifyQ = false
		q.start(pick, cs, true, false, now, launch)
	}
	clear(q.verifyQ[len(kept):])
	q.verifyQ = kept

	// Fresh chunks.
	var unfit []*chunkState // over the limit of every ready node looked at
	for q.pending.len() > 0 {
		s := q.top(now)
		if s == nil {
			break
		}
		cs := q.pending.popFront()
		if cs.phase != phPending { // leased back to a node that offered it
			continue
		}
		if cs.reserved != nil && cs.reserved != s && now.Before(cs.reservedUntil) {
			q.reservedQ.pushBack(cs) // its node may hold the result
			continue
		}
		if !s.fits(cs) {
			if s = q.pickFor(cs, now); s == nil {
				if unfit = append(unfit, cs); len(unfit) >= 64 {
					break // the rest wait for the next pass
				}
				continue
			}
		}
		q.start(s, cs, false, false, now, launch)
	}
	for i := len(unfit) - 1; i >= 0; i-- { // first in line again, in order
		q.pending.pushFront(unfit[i])
	}
	if q.pending.len() > 0 || q.reservedQ.len() > 0 || len(q.verifyQ) > 0 {
		return
	}
	q.speculate(now, launch)
}

// pickFor returns the ready node first in line that may take cs: not a
// voter on it, and cs within its size limit (nodeState.fits); nil if none.
// It looks at no more than len(cs.voters)+8 nodes.
func (q *sched) pickFor(cs *chunkState, now time.Time) *nodeState {
	var aside []*nodeState
	defer func() {
		for _, s := range aside {
			q.touch(s, now)
		}
	}()
	for range len(cs.voters) + 8 {
		s := q.top(now)
		if s == nil {
			return nil
		}
		if !cs.voters[s.id] && s.fits(cs) {
			return s
		}
		q.ready.remove(s)
		aside = append(aside, s)
	}
	return nil
}

// speculate duplicates leases more than twice their expected time old
// onto idle nodes at least as fast as theirs, earliest overdue first; the
// first result wins. It looks at no more than 16 late leases per call.
func (q *sched) speculate(now time.Time, launch func(*lease)) {
	var skipped []*lease
	for tries := 0; tries < 16 && q.late.len() > 0 && q.idle.len() > 0; tries++ {
		ls := q.late.peek()
		if ls.overdueAt.After(now) {
			break
		}
		q.late.remove(ls)
		if len(ls.cs.leases) != 1 || ls.verdict != vNone {
			continue // already duplicated or answered
		}
		s := q.idleFor(ls, now)
		if s == nil {
			skipped = append(skipped, ls)
			continue
		}
		q.speculative++
		q.start(s, ls.cs, ls.opinion, true, now, launch)
	}
	for _, ls := range skipped {
		if !ls.ended {
			q.late.set(ls)
		}
	}
}

// idleFor returns the fastest idle node that may duplicate ls, or nil.
func (q *sched) idleFor(ls *lease, now time.Time) *nodeState {
	var aside []*nodeState
	defer func() {
		for _, s := range aside {
			q.touch(s, now)
		}
	}()
	for range len(ls.cs.voters) + 2 {
		if q.idle.len() == 0 {
			return nil
		}
		s := q.idle.peek()
		if !q.spare(s, now) || len(s.leases) > 0 {
			q.idle.remove(s)
			aside = append(aside, s)
			continue
		}
		if sp := s.speed(); sp != 0 && sp < ls.node.speed() {
			return nil // the fastest idle node is slower
		}
		if s != ls.node && !ls.cs.voters[s.id] && s.fits(ls.cs) {
			return s
		}
		q.idle.remove(s)
		aside = append(aside, s)
	}
	return nil
}

// hold records the lease on its node (its queue) and its chunk (leased now).
func (ls *lease) hold() {
	ls.node.leases = append(ls.node.leases, ls)
	ls.node.queued += ls.tokens
	ls.cs.leases = append(ls.cs.leases, ls)
	if ls.cs.phase == phPending {
		ls.cs.phase = phLeased
	}
}

// start records a lease of cs on s and launches it.
func (q *sched) start(s *nodeState, cs *chunkState, opinion, spec bool, now time.Time, launch func(*lease)) {
	tokens := cs.ch.Tokens()
	expect, timeout := q.deadline(s, tokens)
	ls := &lease{node: s, cs: cs, opinion: opinion, spec: spec, tokens: tokens, start: now,
		expect: expect, timeout: timeout, latePos: -1}
	ls.hold()
	q.started = true
	q.leasedN++
	exp := expect
	if exp <= 0 {
		exp = q.typical
	}
	if exp <= 0 {
		exp = q.cfg.MinLeaseTimeout
	}
	ls.overdueAt = now.Add(2 * exp)
	q.late.set(ls)
	q.touch(s, now)
	launch(ls)
}

// end takes a finished lease (whatever its outcome) off its node and
// chunk.
func (q *sched) end(ls *lease, now time.Time) {
	if ls.ended {
		return
	}
	ls.ended = true
	s, cs := ls.node, ls.cs
	s.leases = removeLease(s.leases, ls)
	cs.leases = removeLease(cs.leases, ls)
	s.queued -= ls.tokens
	q.late.remove(ls)
	q.leasedN--
	q.touch(s, now)
}

// delivered folds a lease that returned a result into its node's
// measured speed, the swarm's typical lease time and the node's overload
// cap (additive increase: one slot per cap successes).
func (q *sched) delivered(ls *lease, end time.Time) {
	q.typical = ewma(q.typical, end.Sub(ls.start))
	ls.node.succeeded(ls, end, 4*q.cfg.LeasesPerNode)
	q.touch(ls.node, end)
}

// succeeded folds a lease of s that returned a result into s's measured
// speed and its overload cap (additive increase: one slot per cap
// successes, up to most).
func (s *nodeState) succeeded(ls *lease, end time.Time, most int) {
	s.observe(ls, end)
	if s.grow++; s.grow >= s.aimd && s.aimd < most {
		s.aimd, s.grow = s.aimd+1, 0
	}
}

// expired: a lease's deadline passed. The node's speed estimate halves
// and it waits a quarter of MinLeaseTimeout before its next lease.
func (q *sched) expired(ls *lease, now time.Time) {
	s := ls.node
	q.shrink(s, now)
	s.tps /= 2
	s.backoff = now.Add(q.cfg.MinLeaseTimeout / 4)
	q.touch(s, now)
}

// requeue puts a chunk whose lease failed back in line, unless another
// lease of it is still running.
func (q *sched) requeue(cs *chunkState, opinion bool, now time.Time) {
	if len(cs.leases) > 0 || cs.phase == phDone || cs.phase == phStoring {
		return
	}
	if cs.phase == phVerify || opinion {
		if len(cs.held) > 0 {
			q.queueVerify(cs, now)
			return
		}
	}
	cs.phase = phPending
	q.pending.pushFront(cs)
}

func (q *sched) queueVerify(cs *chunkState, now time.Time) {
	cs.phase = phVerify
	if cs.inVerifyQ {
		return
	}
	cs.inVerifyQ = true
	if cs.queuedAt.IsZero() || len(cs.held) <= 1 {
		cs.queuedAt = now
	}
	q.verifyQ = append(q.verifyQ, cs)
}

func (q *sched) removeFromVerifyQ(cs *chunkState) {
	if !cs.inVerifyQ {
		return
	}
	cs.inVerifyQ = false
	if i := slices.Index(q.verifyQ, cs); i >= 0 {
		q.verifyQ = slices.Delete(q.verifyQ, i, i+1)
	}
}

// pendingLen is the chunks waiting for a first lease.
func (q *sched) pendingLen() int { return q.pending.len() + q.reservedQ.len() }
