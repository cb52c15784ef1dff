// The scheduling loop of Collect: leases, verification and the node table,
// owned by one goroutine.

package coordinator

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"

	"carryon/dataset"
	"carryon/protocol"
	"carryon/tensor"
)

// chunkPhase is where a chunk stands in one Collect.
type chunkPhase uint8

const (
	phPending chunkPhase = iota // in the pending queue or about to be
	phLeased                    // leased for a first result
	phVerify                    // results held, awaiting an agreeing one
	phStoring                   // a result is being written to the cache
	phDone                      // in the cache
)

// chunkState is the loop's record of one chunk.
type chunkState struct {
	ch       *dataset.Chunk
	phase    chunkPhase
	leases   []*lease     // in flight for this chunk
	held     []heldResult // results awaiting agreement (phVerify)
	voters   map[peer.ID]bool
	attempts int
	force    bool      // verify its next result whatever the sampling says
	queuedAt time.Time // when it entered the verification queue
	storedBy *nodeState
	verified bool
	// reserved: a node that may hold this chunk's result (it offered it, or
	// held its lease when the coordinator stopped) gets it first, until
	// reservedUntil.
	reserved      *nodeState
	reservedUntil time.Time
}

// heldResult is one node's result for a chunk under verification.
type heldResult struct {
	node    *nodeState
	entries [][]Entry
}

// lease is one chunk on one node.
type lease struct {
	node     *nodeState
	cs       *chunkState
	opinion  bool // a second or third opinion (the chunk was in phVerify)
	spec     bool // a speculative duplicate of a slow lease
	tokens   int
	start    time.Time
	expect   time.Duration // expected time to the result
	cancel   context.CancelFunc
	verdict  verdictKind // what the loop answered its claim
	canceled string      // why the loop cancelled it ("" if it did not)
}

// nodeState is the scheduler's view of one volunteer.
type nodeState struct {
	id         peer.ID
	advert     *protocol.Advert
	seen       time.Time
	leases     []*lease
	queued     int // tokens of its leases in flight
	tps        float64
	lastFinish time.Time
	aimd       int // in-flight cap from overload feedback
	grow       int // successes since aimd last grew
	done       int
	opinions   int
	verified   int
	failures   int
	clean      int  // verified results since its last disagreement
	suspect    bool // lost or could not settle a comparison
	banned     bool
	banReason  string
	backoff    time.Time // no new lease before this
	unverified []*chunkState
	offers     []*chunkState // chunks it holds results for: leased to it first
	prior      NodeRecord    // the store's record when the loop met it
	saved      NodeRecord    // the last record queued for the store
}

// speed is the node's measured throughput, else its advertised one, in
// tokens per second (0: unknown).
func (n *nodeState) speed() float64 {
	if n.tps > 0 {
		return n.tps
	}
	if n.advert != nil {
		return n.advert.TokensPerSec
	}
	return 0
}

type verdictKind uint8

const (
	vNone   verdictKind = iota // not claimed
	vReject                    // superseded: not wanted
	vStore                     // write it to the cache
	vHold                      // keep it for comparison
)

// Events from goroutines to the loop.
type (
	// claimEv: a lease received a complete, well-formed result and asks
	// what to do with it.
	claimEv struct {
		l       *lease
		entries [][]Entry
		reply   chan claimReply
	}
	claimReply struct {
		kind   verdictKind
		keep   bool         // vReject: leave the result with the node (no Ack)
		others []heldResult // vHold: the results to compare against
	}
	// finishEv: a lease ended.
	finishEv struct {
		l       *lease
		err     error
		stored  bool
		entries [][]Entry // vHold
		cmps    []comparison
		bytes   int64
		end     time.Time
	}
	// storedEv: a verified result was written (or not).
	storedEv struct {
		cs   *chunkState
		node *nodeState
		err  error
	}
	// selfEv: the coordinator's own second opinion.
	selfEv struct {
		cs      *chunkState
		entries [][]Entry
		cmps    []comparison
		err     error
	}
)

// comparison is one held result compared with a new one.
type comparison struct {
	node  *nodeState
	stats verifyStats
	err   error
}

func (c comparison) agree() bool { return c.err == nil && c.stats.agree() }

// errSuperseded rejects a result the loop no longer wants.
var errSuperseded = errors.New("result superseded: another lease delivered this chunk")

// errNotTaken drops a result unacknowledged (the stream is reset, no
// Ack): its lease was cancelled, and the node keeps the result to offer
// it again.
var errNotTaken = errors.New("result not taken now: its lease was cancelled")

// loop is the state of one Collect, owned by its run goroutine.
type loop struct {
	c           *Coordinator
	cfg         Config
	job         embedJob
	rng         *rand.Rand
	chunks      []*chunkState
	pending     []*chunkState // front is leased first
	verifyQ     []*chunkState
	nodes       map[peer.ID]*nodeState
	events      chan any
	disconnects chan peer.ID
	progress    func(Progress)
	running     int // goroutines that will send one more event
	selfBusy    bool

	total, done, cachedAtStart int
	tokens, bytes              int64
	baseTokens, computed       int64
	verifyTokens               int64 // second and third opinions, the coordinator's included
	selfTokens                 int64 // the coordinator's own opinions
	speculative, reassigned    int
	selfVerified, skipped      int
	unsettled                  int
	vs                         VerifyStatus
	typical                    time.Duration // EWMA of completed lease durations
	lastPublish                time.Time
	started                    bool // leasing began (MinNodes was reached)
	byID                       map[string]*chunkState
	offers                     chan offerEv
	lastSave                   time.Time
	finished                   bool
	ann                        announcer
}

func (l *loop) run(ctx context.Context, adverts <-chan *protocol.Advert) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Now()
	var fatal error
	for {
		for l.done < l.total && fatal == nil {
			l.assign(ctx)
			select {
			case <-ctx.Done():
				fatal = fmt.Errorf("coordinator.Collect: %w", ctx.Err())
			case a := <-adverts:
				l.observe(a)
			case p := <-l.disconnects:
				l.disconnected(p)
			case ev := <-l.events:
				fatal = l.handle(ev)
			case o := <-l.offers:
				l.offered(o.peer, o.chunks)
			case <-tick.C:
				l.checkConnections()
			case <-l.ann.joins:
				l.ann.due = true
			}
			l.announce(ctx)
			if l.progress != nil && (time.Since(lastReport) > time.Second || l.done == l.total) {
				lastReport = time.Now()
				l.progress(l.snapshot())
			}
			l.publish(false)
			l.saveNodes(false)
		}
		// Cancel what is still in flight (speculative losers, or
		// everything on failure) and wait for every goroutine's last
		// event. A late event can ban a node and drop its chunks: then
		// the job goes on.
		for _, cs := range l.chunks {
			for _, ls := range cs.leases {
				l.cancelLease(ls, "job over")
			}
		}
		for l.running > 0 {
			if err := l.handle(<-l.events); err != nil && fatal == nil {
				fatal = err
			}
		}
		if fatal != nil || l.done == l.total {
			break
		}
	}
	l.finished = true
	l.publish(true)
	l.saveNodes(true)
	if fatal == nil {
		l.c.log.Info("embeddings collected", "job", l.job.ID, "chunks", l.total, "verified", l.vs.Verified,
			"disagreements", l.vs.Disagreements, "bans", l.vs.Bans, "extra_compute", l.extraFraction())
	}
	return fatal
}

// handle applies one goroutine event; it returns an error only when the
// whole job must stop.
func (l *loop) handle(ev any) error {
	switch ev := ev.(type) {
	case claimEv:
		ev.reply <- l.claim(ev.l, ev.entries)
	case finishEv:
		l.running--
		return l.finish(ev)
	case storedEv:
		l.running--
		return l.stored(ev)
	case selfEv:
		l.running--
		l.selfBusy = false
		return l.selfDone(ev)
	}
	return nil
}

// node returns the loop's record of id, creating it from the store's
// record: trust (BOINC's adaptive replication) and a ban from this job
// survive restarts.
func (l *loop) node(id peer.ID) *nodeState {
	if s := l.nodes[id]; s != nil {
		return s
	}
	s := &nodeState{id: id, aimd: l.cfg.LeasesPerNode}
	if rec, ok := l.c.state.nodeRecord(id.String()); ok {
		s.prior, s.saved = rec, rec
		s.clean, s.suspect, s.tps = rec.Clean, rec.Suspect, rec.TokensPerSec
		if rec.BannedJob == l.job.ID {
			s.banned, s.banReason = true, rec.BanReason
		}
	}
	l.nodes[id] = s
	return s
}

// record is what the store should hold for s now.
func (l *loop) record(s *nodeState) NodeRecord {
	r := NodeRecord{Clean: s.clean, Suspect: s.suspect, Verified: s.prior.Verified + s.verified,
		Chunks: s.prior.Chunks + s.done, Failures: s.prior.Failures + s.failures, TokensPerSec: s.tps,
		BannedJob: s.prior.BannedJob, BanReason: s.prior.BanReason, UnixMilli: s.saved.UnixMilli}
	if s.banned {
		r.Clean, r.Suspect, r.BannedJob, r.BanReason = 0, true, l.job.ID, s.banReason
	}
	return r
}

// saveNodes queues the records that changed for the next group commit
// (every second, and at the end with all set).
func (l *loop) saveNodes(all bool) {
	now := time.Now()
	if !all && now.Sub(l.lastSave) < time.Second {
		return
	}
	l.lastSave = now
	for id, s := range l.nodes {
		r := l.record(s)
		if r == s.saved {
			continue
		}
		r.UnixMilli = now.UnixMilli()
		s.saved = r
		key := []byte(id.String())
		l.c.state.later(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bNodes), key, r) })
	}
}

// offered queues chunks whose results n holds (offered after a restart,
// or leased to it when the coordinator stopped) to be leased back to it
// first.
func (l *loop) offered(id peer.ID, chunks []string) {
	s := l.node(id)
	n := 0
	for _, c := range chunks {
		if cs := l.byID[c]; cs != nil && cs.phase == phPending {
			s.offers = append(s.offers, cs)
			cs.reserved, cs.reservedUntil = s, time.Now().Add(l.cfg.MinLeaseTimeout)
			n++
		}
	}
	if n > 0 {
		l.c.log.Info("node holds finished chunks; leasing them back", "node", id.String(), "chunks", n)
	}
}

// observe records an advert.
func (l *loop) observe(a *protocol.Advert) {
	id, err := peer.Decode(a.Peer)
	if err != nil {
		return
	}
	s := l.node(id)
	first := s.advert == nil
	s.advert, s.seen = a, time.Now()
	switch {
	case first && l.serves(a):
		l.c.log.Info("node joined", "node", id.String(), "device", a.Device, "tokens_per_s", a.TokensPerSec)
	case first:
		var has []string
		for _, b := range a.Bases {
			has = append(has, b.Name+" ("+short(b.WeightsHash)+")")
		}
		l.c.log.Info("node serves another base or codec: no work for it in this job", "node", id.String(),
			"node_bases", strings.Join(has, ", "), "node_codecs", strings.Join(a.Codecs, ","),
			"job_base", short(l.job.Base), "job_codec", l.job.Codec.String())
	}
}

// serves reports whether the advert offers this job's base and codec.
func (l *loop) serves(a *protocol.Advert) bool {
	base := false
	for _, b := range a.Bases {
		base = base || (b.WeightsHash == l.job.Base && b.Dim == l.job.Dim)
	}
	codec := false
	for _, s := range a.Codecs {
		if cd, err := tensor.ParseCodec(s); err == nil && cd == l.job.Codec {
			codec = true
		}
	}
	return base && codec
}

func (l *loop) eligible(s *nodeState, now time.Time) bool {
	return !s.banned && s.advert != nil && now.Sub(s.seen) < l.cfg.NodeTTL && l.serves(s.advert) &&
		l.c.h.Network().Connectedness(s.id) == network.Connected
}

// disconnected fails the leases of a peer whose last connection dropped:
// at once, not at their deadlines.
func (l *loop) disconnected(p peer.ID) {
	s := l.nodes[p]
	if s == nil || len(s.leases) == 0 || l.c.h.Network().Connectedness(p) == network.Connected {
		return
	}
	l.c.log.Warn("node disconnected; its leases are reassigned", "node", p.String(), "leases", len(s.leases))
	for _, ls := range append([]*lease(nil), s.leases...) {
		l.cancelLease(ls, "disconnected")
	}
}

// checkConnections catches drops whose notification was lost.
func (l *loop) checkConnections() {
	for id, s := range l.nodes {
		if len(s.leases) > 0 {
			l.disconnected(id)
		}
	}
}

func (l *loop) cancelLease(ls *lease, why string) {
	if ls.canceled == "" {
		ls.canceled = why
	}
	ls.cancel()
}

// caps returns each ready node's in-flight cap: LeasesPerNode scaled by
// its speed relative to the median ready node (so faster nodes hold more
// chunks), within [1, 4·LeasesPerNode], and no more than its overload
// feedback (aimd) allows.
func (l *loop) capOf(s *nodeState, median float64) int {
	c := l.cfg.LeasesPerNode
	if sp := s.speed(); sp > 0 && median > 0 {
		c = int(float64(l.cfg.LeasesPerNode)*sp/median + 0.5)
	}
	return max(1, min(c, 4*l.cfg.LeasesPerNode, s.aimd))
}

// deadline sizes a lease: the node's queued tokens plus this chunk's at
// its speed (measured, else advertised, else the swarm's typical lease
// time), times 4, plus half of MinLeaseTimeout, clamped to
// [MinLeaseTimeout, LeaseTimeout].
func (l *loop) deadline(s *nodeState, tokens int) (expect, timeout time.Duration) {
	if sp := s.speed(); sp > 0 {
		expect = time.Duration(float64(s.queued+tokens) / sp * float64(time.Second))
	} else {
		expect = l.typical
	}
	if expect <= 0 {
		return 0, l.cfg.LeaseTimeout
	}
	timeout = 4*expect + l.cfg.MinLeaseTimeout/2
	return expect, min(max(timeout, l.cfg.MinLeaseTimeout), l.cfg.LeaseTimeout)
}

// assign leases work to ready nodes: second opinions first (they hold
// results in memory), then pending chunks, fastest nodes first and each
// up to its cap; with nothing left to hand out, it duplicates the slowest
// overdue lease onto an idle node (the tail of the job).
func (l *loop) assign(ctx context.Context) {
	now := time.Now()
	var ready []*nodeState
	var speeds []float64
	for _, s := range l.nodes {
		if l.eligible(s, now) {
			if sp := s.speed(); sp > 0 {
				speeds = append(speeds, sp)
			}
			if now.After(s.backoff) {
				ready = append(ready, s)
			}
		}
	}
	if !l.started && len(ready) < l.cfg.MinNodes {
		return
	}
	sort.Float64s(speeds)
	median := 0.0
	if len(speeds) > 0 {
		median = speeds[len(speeds)/2]
	}
	sort.Slice(ready, func(i, j int) bool {
		if a, b := ready[i].speed(), ready[j].speed(); a != b {
			return a > b
		}
		return ready[i].id < ready[j].id
	})
	spare := func(s *nodeState) bool { return len(s.leases) < l.capOf(s, median) }

	// Chunks a node already holds results for go back to it.
	for _, s := range ready {
		for len(s.offers) > 0 && spare(s) {
			cs := s.offers[0]
			s.offers = s.offers[1:]
			if cs.phase == phPending {
				l.startLease(ctx, s, cs, false, false)
			}
		}
	}

	// Second opinions.
	kept := l.verifyQ[:0]
	for _, cs := range l.verifyQ {
		if len(cs.leases) > 0 {
			continue // an opinion is on its way; finish re-queues on failure
		}
		if l.cfg.SelfVerify && l.c.base != nil {
			if l.selfBusy {
				kept = append(kept, cs)
				continue
			}
			l.selfVerify(cs)
			continue
		}
		var pick *nodeState
		for _, s := range ready {
			if !cs.voters[s.id] && spare(s) {
				pick = s
				break
			}
		}
		if pick == nil {
			kept = append(kept, cs)
			continue
		}
		l.startLease(ctx, pick, cs, true, false)
	}
	l.verifyQ = kept
	l.giveUpVerification(now, ready)

	// Fresh chunks.
	for _, s := range ready {
		for tries := len(l.pending); tries > 0 && len(l.pending) > 0 && spare(s); tries-- {
			cs := l.pending[0]
			l.pending = l.pending[1:]
			if cs.phase != phPending { // leased back to a node that offered it
				continue
			}
			if cs.reserved != nil && cs.reserved != s && now.Before(cs.reservedUntil) {
				l.pending = append(l.pending, cs) // its node may hold the result
				continue
			}
			l.startLease(ctx, s, cs, false, false)
		}
	}
	if len(l.pending) > 0 || len(l.verifyQ) > 0 {
		return
	}
	// The tail: duplicate leases that run well past their expected time
	// onto idle nodes, slowest first; the first result wins.
	var idle []*nodeState
	for _, s := range ready {
		if len(s.leases) == 0 {
			idle = append(idle, s)
		}
	}
	if len(idle) == 0 {
		return
	}
	type late struct {
		ls      *lease
		overdue float64
	}
	var lates []late
	for _, s := range l.nodes {
		for _, ls := range s.leases {
			exp := ls.expect
			if exp <= 0 {
				exp = l.typical
			}
			age := now.Sub(ls.start)
			if exp > 0 && len(ls.cs.leases) == 1 && ls.verdict == vNone && age > 2*exp {
				lates = append(lates, late{ls, float64(age) / float64(exp)})
			}
		}
	}
	sort.Slice(lates, func(i, j int) bool { return lates[i].overdue > lates[j].overdue })
	for _, lt := range lates {
		cs := lt.ls.cs
		for i, s := range idle {
			if s != lt.ls.node && !cs.voters[s.id] && (s.speed() >= lt.ls.node.speed() || s.speed() == 0) {
				l.speculative++
				l.startLease(ctx, s, cs, lt.ls.opinion, true)
				idle = append(idle[:i], idle[i+1:]...)
				break
			}
		}
		if len(idle) == 0 {
			return
		}
	}
}

// giveUpVerification settles queued chunks that no node can give a
// further opinion on for NodeTTL: a lone result is stored unverified; two
// disagreeing ones are dropped and the chunk redone.
func (l *loop) giveUpVerification(now time.Time, ready []*nodeState) {
	if l.cfg.SelfVerify {
		return
	}
	kept := l.verifyQ[:0]
	for _, cs := range l.verifyQ {
		candidate := false
		for _, s := range l.nodes {
			candidate = candidate || (l.eligible(s, now) && !cs.voters[s.id])
		}
		if candidate || len(cs.leases) > 0 || now.Sub(cs.queuedAt) < l.cfg.NodeTTL {
			kept = append(kept, cs)
			continue
		}
		if len(cs.held) == 1 {
			l.skipped++
			l.c.log.Warn("no second node to verify a chunk; stored unverified", "chunk", short(cs.ch.ID))
			l.storeAsync(cs, cs.held[0].node, cs.held[0].entries, false)
			continue
		}
		l.unsettle(cs, "no third node to settle a disagreement")
	}
	l.verifyQ = kept
}

// startLease starts one lease goroutine.
func (l *loop) startLease(ctx context.Context, s *nodeState, cs *chunkState, opinion, spec bool) {
	tokens := cs.ch.Tokens()
	expect, timeout := l.deadline(s, tokens)
	lctx, cancel := context.WithTimeout(ctx, timeout)
	ls := &lease{node: s, cs: cs, opinion: opinion, spec: spec, tokens: tokens, start: time.Now(),
		expect: expect, cancel: cancel}
	s.leases = append(s.leases, ls)
	s.queued += tokens
	cs.leases = append(cs.leases, ls)
	if cs.phase == phPending {
		cs.phase = phLeased
	}
	l.started = true
	l.running++
	go l.runLease(lctx, ls)
}

// runLease runs one lease: the RPC, the loop's verdict on the result, and
// what the verdict asks (store it, or compare it with the held results).
func (l *loop) runLease(ctx context.Context, ls *lease) {
	ev := finishEv{l: ls}
	// The lease is durable before the node hears of it: after a crash the
	// chunk goes back to this node, which may hold its result.
	key, rec := []byte(ls.cs.ch.ID), leaseRecord{Node: ls.node.id.String(), UnixMilli: ls.start.UnixMilli()}
	if err := l.c.state.groupWrite(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bLeases), key, rec) }, false); err != nil {
		ev.err, ev.end = err, time.Now()
		ls.cancel()
		l.events <- ev
		return
	}
	_, _, ev.err = embedChunk(ctx, l.c.h, ls.node.id, l.job, ls.cs.ch, func(entries [][]Entry) (bool, error) {
		ev.bytes = payloadBytes(entries)
		reply := make(chan claimReply, 1)
		l.events <- claimEv{l: ls, entries: entries, reply: reply}
		v := <-reply
		switch v.kind {
		case vStore:
			if err := l.c.put(ls.cs.ch, entries, ls.node.id.String(), false); err != nil {
				return false, err
			}
			ev.stored = true
			return false, nil
		case vHold: // in memory only: the node keeps its copy (Ack.Held)
			ev.entries = entries
			for _, h := range v.others {
				st, err := compareEntries(l.job.Codec, l.cfg.VerifyKernelRel, h.entries, entries)
				ev.cmps = append(ev.cmps, comparison{node: h.node, stats: st, err: err})
			}
			return true, nil
		default:
			if v.keep {
				return false, errNotTaken
			}
			return false, errSuperseded
		}
	})
	if ev.err != nil && ctx.Err() != nil {
		ev.err = fmt.Errorf("%w: %w", ctx.Err(), ev.err)
	}
	ev.end = time.Now()
	ls.cancel()
	l.events <- ev
}

func payloadBytes(entries [][]Entry) int64 {
	var n int64
	for _, layer := range entries {
		for _, e := range layer {
			n += int64(len(e.Data))
		}
	}
	return n
}

// claim decides what happens to a lease's result, in the loop.
func (l *loop) claim(ls *lease, entries [][]Entry) claimReply {
	cs := ls.cs
	if ls.canceled != "" || ls.node.banned || cs.phase == phDone || cs.phase == phStoring {
		// The node keeps a result nobody else delivered (the lease was
		// cancelled: job over, disconnect, deadline) to offer it again.
		keep := !ls.node.banned && cs.phase != phDone && cs.phase != phStoring && ls.canceled != "superseded"
		return claimReply{kind: vReject, keep: keep}
	}
	for _, o := range cs.leases { // first result wins
		if o != ls {
			l.cancelLease(o, "superseded")
		}
	}
	if ls.opinion || cs.phase == phVerify {
		ls.verdict = vHold
		cs.phase = phVerify
		return claimReply{kind: vHold, others: append([]heldResult(nil), cs.held...)}
	}
	p := samplingRate(l.cfg.VerifyFraction, ls.node.clean, ls.node.suspect)
	if (cs.force || l.rng.Float64() < p) && l.canVerify(ls.node) {
		l.vs.Sampled++
		ls.verdict = vHold
		cs.phase = phVerify
		return claimReply{kind: vHold}
	}
	ls.verdict = vStore
	cs.phase = phStoring
	return claimReply{kind: vStore}
}

// canVerify reports whether a second opinion on s's result can be had.
func (l *loop) canVerify(s *nodeState) bool {
	if l.cfg.SelfVerify {
		return true
	}
	now := time.Now()
	for _, o := range l.nodes {
		if o != s && l.eligible(o, now) {
			return true
		}
	}
	return false
}

// finish applies one lease's outcome.
func (l *loop) finish(ev finishEv) error {
	ls, s, cs := ev.l, ev.l.node, ev.l.cs
	s.leases = removeLease(s.leases, ls)
	cs.leases = removeLease(cs.leases, ls)
	s.queued -= ls.tokens
	l.bytes += ev.bytes
	got := ls.verdict == vHold && ev.entries != nil || ev.stored
	if got {
		l.computed += int64(ls.tokens)
		if ls.opinion {
			l.verifyTokens += int64(ls.tokens)
		}
		s.observe(ls, ev.end)
		l.typical = ewma(l.typical, ev.end.Sub(ls.start))
		if s.grow++; s.grow >= s.aimd && s.aimd < 4*l.cfg.LeasesPerNode {
			s.aimd, s.grow = s.aimd+1, 0 // additive increase: one slot per cap successes
		}
	}
	switch {
	case ev.stored && s.banned:
		// Banned while its unverified result was being written.
		if err := l.c.drop(cs.ch); err != nil {
			return fmt.Errorf("coordinator.Collect: drop a banned node's chunk: %w", err)
		}
		l.vs.Dropped++
		cs.phase, cs.force = phPending, true
		l.pending = append(l.pending, cs)
		return nil
	case ev.stored:
		l.chunkDone(cs, s, false)
		return nil
	case ls.verdict == vStore: // our cache write failed, not the node
		cs.phase = phPending
		cs.attempts++
		l.pending = append([]*chunkState{cs}, l.pending...)
		l.c.log.Warn("cache write failed", "chunk", short(cs.ch.ID), "err", ev.err)
		if cs.attempts >= l.cfg.MaxAttempts {
			return fmt.Errorf("coordinator.Collect: chunk %s: %w", short(cs.ch.ID), ev.err)
		}
		return nil
	case got:
		if ls.opinion {
			s.opinions++
		}
		return l.settle(cs, heldResult{node: s, entries: ev.entries}, ev.cmps)
	case ls.verdict == vReject || ls.canceled == "superseded" || ls.canceled == "job over":
		// Someone else delivered, or the node was banned or dropped while
		// its result was on the way: requeue unless another lease or a
		// stored result covers the chunk.
		l.requeue(cs, ls.opinion)
		return nil
	}
	return l.failed(ls, ev.err)
}

func removeLease(ls []*lease, x *lease) []*lease {
	for i, o := range ls {
		if o == x {
			return append(ls[:i], ls[i+1:]...)
		}
	}
	return ls
}

func ewma(old, x time.Duration) time.Duration {
	if old == 0 {
		return x
	}
	return (7*old + 3*x) / 10
}

// observe folds a completed lease into the node's measured throughput:
// the lease's tokens over the time since the later of its start and the
// node's previous completion (a busy node's service time).
func (n *nodeState) observe(ls *lease, end time.Time) {
	from := ls.start
	if n.lastFinish.After(from) {
		from = n.lastFinish
	}
	n.lastFinish = end
	d := end.Sub(from).Seconds()
	if d <= 0 {
		return
	}
	x := float64(ls.tokens) / d
	if n.tps > 0 {
		x = 0.7*n.tps + 0.3*x
	}
	n.tps = x
}

// failed handles a lease that delivered nothing.
func (l *loop) failed(ls *lease, err error) error {
	s, cs := ls.node, ls.cs
	log := l.c.log.With("node", s.id.String(), "chunk", short(cs.ch.ID))
	if ls.canceled == "banned" {
		l.requeue(cs, ls.opinion)
		return nil
	}
	var perr *protocol.Error
	if errors.As(err, &perr) && perr.Kind == protocol.KindOverloaded {
		// Back-pressure, not a fault: the node holds as many jobs as it
		// takes; cap it there and retry soon.
		s.aimd = max(1, len(s.leases))
		s.backoff = time.Now().Add(50 * time.Millisecond)
		log.Debug("node overloaded", "err", err, "cap", s.aimd)
		l.requeue(cs, ls.opinion)
		return nil
	}
	s.failures++
	l.reassigned++
	attempt := true
	switch {
	case errors.Is(err, errBadResult):
		l.ban(s, fmt.Sprintf("protocol violation: %v", err))
	case errors.As(err, &perr) && perr.Kind == protocol.KindModelMismatch:
		l.ban(s, "does not serve the base it advertised")
	case errors.Is(err, context.DeadlineExceeded):
		s.tps /= 2
		s.backoff = time.Now().Add(l.cfg.MinLeaseTimeout / 4)
		log.Warn("lease deadline passed; reassigned", "after", time.Since(ls.start).Round(time.Millisecond),
			"expected", ls.expect.Round(time.Millisecond))
	case ls.canceled != "":
		attempt = ls.canceled != "disconnected"
		log.Warn("lease cancelled; reassigned", "why", ls.canceled)
	default:
		s.backoff = time.Now().Add(200 * time.Millisecond)
		log.Warn("chunk failed; reassigned", "err", err)
	}
	if attempt {
		cs.attempts++
	}
	l.requeue(cs, ls.opinion)
	if cs.attempts >= l.cfg.MaxAttempts {
		return fmt.Errorf("coordinator.Collect: chunk %s failed %d times, last: %w", short(cs.ch.ID), cs.attempts, err)
	}
	return nil
}

// requeue puts a chunk whose lease failed back in line, unless another
// lease of it is still running.
func (l *loop) requeue(cs *chunkState, opinion bool) {
	if len(cs.leases) > 0 || cs.phase == phDone || cs.phase == phStoring {
		return
	}
	if cs.phase == phVerify || opinion {
		if len(cs.held) > 0 {
			l.queueVerify(cs)
			return
		}
	}
	cs.phase = phPending
	l.pending = append([]*chunkState{cs}, l.pending...)
}

func (l *loop) queueVerify(cs *chunkState) {
	cs.phase = phVerify
	for _, o := range l.verifyQ {
		if o == cs {
			return
		}
	}
	if cs.queuedAt.IsZero() || len(cs.held) <= 1 {
		cs.queuedAt = time.Now()
	}
	l.verifyQ = append(l.verifyQ, cs)
}

// settle adds a new result to a chunk under verification. It agrees with
// a held result: the chunk is stored, and any held result that disagrees
// with both members of the agreeing pair is outvoted 2 to 1 and its node
// banned. It agrees with none: with three results and no pair, the chunk
// is redone from scratch; else another opinion is queued.
func (l *loop) settle(cs *chunkState, r heldResult, cmps []comparison) error {
	if r.node.banned { // banned while its result was on the way
		l.requeue(cs, true)
		return nil
	}
	if cs.voters == nil {
		cs.voters = map[peer.ID]bool{}
	}
	cs.voters[r.node.id] = true
	var partner *heldResult
	for _, cmp := range cmps {
		if cmp.err != nil {
			l.c.log.Warn("comparison failed", "chunk", short(cs.ch.ID), "err", cmp.err)
		}
		if !cmp.agree() {
			l.vs.Disagreements++
			l.c.log.Warn("results disagree", "chunk", short(cs.ch.ID), "node", r.node.id.String(),
				"other", cmp.node.id.String(), "stats", cmp.stats.String())
			continue
		}
		for i := range cs.held {
			if cs.held[i].node == cmp.node && partner == nil {
				partner = &cs.held[i]
			}
		}
	}
	if partner != nil {
		p := *partner // ban filters cs.held in place
		partner = &p
		for _, cmp := range cmps {
			if !cmp.agree() && cmp.node != partner.node && !cmp.node.banned {
				l.ban(cmp.node, fmt.Sprintf("outvoted 2 to 1 on chunk %s: %s", short(cs.ch.ID), cmp.stats))
			}
		}
		for _, n := range []*nodeState{partner.node, r.node} {
			n.verified++
			n.clean++
			if n.clean >= 10 {
				n.suspect = false
			}
		}
		l.vs.Verified++
		l.storeAsync(cs, partner.node, partner.entries, true)
		return nil
	}
	cs.held = append(cs.held, r)
	if len(cs.held) >= 3 {
		return l.unsettle(cs, "three results, no two agree")
	}
	l.queueVerify(cs)
	return nil
}

// unsettle drops a chunk's held results and redoes it, verified.
func (l *loop) unsettle(cs *chunkState, why string) error {
	l.unsettled++
	l.c.log.Warn("disagreement not settled; chunk redone", "chunk", short(cs.ch.ID), "why", why, "results", len(cs.held))
	for _, h := range cs.held {
		h.node.suspect, h.node.clean = true, 0
	}
	cs.held, cs.voters, cs.force = nil, nil, true
	cs.attempts++
	cs.phase = phPending
	l.pending = append(l.pending, cs)
	if cs.attempts >= l.cfg.MaxAttempts {
		return fmt.Errorf("coordinator.Collect: chunk %s: %s, %d times", short(cs.ch.ID), why, cs.attempts)
	}
	return nil
}

// storeAsync writes an agreed (or, for want of a second node, unverified)
// result to the cache off the loop.
func (l *loop) storeAsync(cs *chunkState, by *nodeState, entries [][]Entry, verified bool) {
	cs.phase = phStoring
	cs.verified = verified
	cs.held = nil
	l.running++
	go func() {
		err := l.c.put(cs.ch, entries, by.id.String(), verified)
		l.events <- storedEv{cs: cs, node: by, err: err}
	}()
}

func (l *loop) stored(ev storedEv) error {
	if ev.err != nil {
		ev.cs.attempts++
		ev.cs.phase, ev.cs.voters = phPending, nil
		l.pending = append([]*chunkState{ev.cs}, l.pending...)
		l.c.log.Warn("cache write failed", "chunk", short(ev.cs.ch.ID), "err", ev.err)
		if ev.cs.attempts >= l.cfg.MaxAttempts {
			return fmt.Errorf("coordinator.Collect: chunk %s: %w", short(ev.cs.ch.ID), ev.err)
		}
		return nil
	}
	l.chunkDone(ev.cs, ev.node, ev.cs.verified)
	return nil
}

// chunkDone records a chunk in the cache, stored from s's result.
func (l *loop) chunkDone(cs *chunkState, s *nodeState, verified bool) {
	cs.phase, cs.storedBy, cs.verified, cs.held = phDone, s, verified, nil
	l.done++
	l.tokens += int64(cs.ch.Tokens())
	if s == nil { // the coordinator's own result
		return
	}
	s.done++
	if !verified {
		s.unverified = append(s.unverified, cs)
	}
}

// ban excludes a node from the job: its leases are cancelled, its
// unverified chunks dropped from the cache and redone, its held results
// discarded.
func (l *loop) ban(s *nodeState, reason string) {
	if s.banned {
		return
	}
	s.banned, s.banReason = true, reason
	l.vs.Bans++
	for _, ls := range append([]*lease(nil), s.leases...) {
		l.cancelLease(ls, "banned")
	}
	dropped := 0
	for _, cs := range s.unverified {
		if cs.phase != phDone || cs.storedBy != s || cs.verified {
			continue
		}
		if err := l.c.drop(cs.ch); err != nil {
			l.c.log.Warn("could not drop a banned node's chunk", "chunk", short(cs.ch.ID), "err", err)
			continue
		}
		cs.phase, cs.storedBy, cs.voters, cs.force = phPending, nil, nil, true
		l.done--
		l.tokens -= int64(cs.ch.Tokens())
		s.done--
		l.pending = append(l.pending, cs)
		dropped++
	}
	s.unverified = nil
	l.vs.Dropped += dropped
	for _, cs := range l.chunks {
		if cs.phase != phVerify {
			continue
		}
		kept := cs.held[:0]
		for _, h := range cs.held {
			if h.node != s {
				kept = append(kept, h)
			}
		}
		cs.held = kept
		if len(cs.held) == 0 && len(cs.leases) == 0 {
			l.removeFromVerifyQ(cs)
			cs.phase, cs.voters = phPending, nil
			l.pending = append(l.pending, cs)
		}
	}
	l.c.log.Warn("node banned for this job", "node", s.id.String(), "reason", reason, "chunks_dropped", dropped)
}

func (l *loop) removeFromVerifyQ(cs *chunkState) {
	for i, o := range l.verifyQ {
		if o == cs {
			l.verifyQ = append(l.verifyQ[:i], l.verifyQ[i+1:]...)
			return
		}
	}
}

// selfVerify computes a second opinion on the coordinator's own base.
func (l *loop) selfVerify(cs *chunkState) {
	l.selfBusy = true
	l.running++
	held := append([]heldResult(nil), cs.held...)
	go func() {
		ev := selfEv{cs: cs}
		ev.entries, ev.err = l.c.selfCompute(cs.ch)
		if ev.err == nil {
			for _, h := range held {
				st, err := compareEntries(l.job.Codec, l.cfg.VerifyKernelRel, ev.entries, h.entries)
				ev.cmps = append(ev.cmps, comparison{node: h.node, stats: st, err: err})
			}
		}
		l.events <- ev
	}()
}

// selfCompute runs the chunk through the coordinator's base and codec.
func (c *Coordinator) selfCompute(ch *dataset.Chunk) ([][]Entry, error) {
	out := make([][]Entry, len(c.cfg.Layers))
	for i := range out {
		out[i] = make([]Entry, len(ch.Seqs))
	}
	for si, sq := range ch.Seqs {
		hs, err := c.base.Forward(sq.Tokens, c.cfg.Layers)
		if err != nil {
			return nil, fmt.Errorf("self-verify: %w", err)
		}
		for li := range c.cfg.Layers {
			rows, d := len(sq.Tokens), c.base.Config.Dim
			out[li][si] = Entry{Rows: rows, Dim: d, Data: c.codec.Encode(nil, hs[li], rows, d)}
		}
	}
	return out, nil
}

// selfDone applies the coordinator's own opinion, which it trusts: a held
// result that disagrees with it is wrong and its node banned.
func (l *loop) selfDone(ev selfEv) error {
	cs := ev.cs
	l.removeFromVerifyQ(cs)
	if ev.err != nil {
		l.c.log.Warn("self-verification failed; chunk stored unverified", "chunk", short(cs.ch.ID), "err", ev.err)
		if len(cs.held) > 0 {
			l.skipped++
			l.storeAsync(cs, cs.held[0].node, cs.held[0].entries, false)
		} else {
			l.requeue(cs, false)
		}
		return nil
	}
	l.selfVerified++
	l.verifyTokens += int64(cs.ch.Tokens())
	l.selfTokens += int64(cs.ch.Tokens())
	var good *heldResult
	for _, cmp := range ev.cmps {
		if !cmp.agree() {
			l.vs.Disagreements++
			if !cmp.node.banned {
				l.ban(cmp.node, fmt.Sprintf("disagrees with the coordinator's own computation of chunk %s: %s", short(cs.ch.ID), cmp.stats))
			}
			continue
		}
		cmp.node.verified++
		cmp.node.clean++
		for i := range cs.held {
			if cs.held[i].node == cmp.node && good == nil {
				good = &cs.held[i]
			}
		}
	}
	l.vs.Verified++
	if good != nil {
		l.storeAsync(cs, good.node, good.entries, true)
		return nil
	}
	// Every node result was wrong (or banned meanwhile): store our own.
	cs.phase = phStoring
	cs.verified, cs.held = true, nil
	l.running++
	go func() {
		err := l.c.put(cs.ch, ev.entries, "", true)
		l.events <- storedEv{cs: cs, err: err}
	}()
	return nil
}
