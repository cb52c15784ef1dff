// The scheduling loop of Collect: leases, verification and the node table,
// owned by one goroutine.

package coordinator

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
	inVerifyQ     bool // in sched.verifyQ
}

// heldResult is one node's result for a chunk under verification.
type heldResult struct {
	node    *nodeState
	entries [][]Entry
}

// lease is one chunk on one node.
type lease struct {
	node    *nodeState
	cs      *chunkState
	opinion bool // a second or third opinion (the chunk was in phVerify)
	spec    bool // a speculative duplicate of a slow lease
	tokens  int
	start   time.Time
	expect  time.Duration // expected time to the result
	timeout time.Duration // its deadline, from start
	// overdueAt is when it becomes a candidate for a speculative
	// duplicate (twice its expected time); latePos is its place in
	// sched.late.
	overdueAt time.Time
	latePos   int
	ended     bool               // taken off its node and chunk
	cancel    context.CancelFunc // nil until launched
	verdict   verdictKind        // what the loop answered its claim
	canceled  string             // why the loop cancelled it ("" if it did not)
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
	fit        bool          // its advert serves the job's base and codec
	slots      int           // most leases its advert leaves room for
	maxTokens  int           // largest chunk it may take (0: any): it refused one larger as over its memory limit
	full       bool          // its advert said FreeSlots 0
	unit       float64       // sched.unit (the ready heap's key)
	// places in sched's heaps (-1: not in)
	readyPos, idlePos, backPos int
}

// fits reports whether cs is no larger than what n takes.
func (n *nodeState) fits(cs *chunkState) bool {
	return n.maxTokens == 0 || cs.ch.Tokens() <= n.maxTokens
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
	sched
	c           *Coordinator
	job         embedJob
	rng         *rand.Rand
	chunks      []*chunkState
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
	reassigned                 int
	selfVerified, skipped      int
	unsettled                  int
	vs                         VerifyStatus
	lastPublish                time.Time
	publishEvery               time.Duration // grows with the cost of a publish
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
			l.assign(time.Now(), func(ls *lease) { l.launch(ctx, ls) }, l.selfHook())
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
				l.giveUpVerification(time.Now())
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
		err := l.finish(ev)
		l.touch(ev.l.node, time.Now())
		return err
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
	l.add(s)
	if rec, ok := l.c.state.nodeRecord(id.String()); ok {
		s.prior, s.saved = rec, rec
		s.clean, s.suspect, s.tps = rec.Clean, rec.Suspect, rec.TokensPerSec
		if rec.BannedJob == l.job.ID {
			s.banned, s.banReason = true, rec.BanReason
		}
	}
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
			l.offering[s] = true
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
	l.sched.observe(s, a, l.serves(a), time.Now())
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
	l.touch(s, time.Now())
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
	if ls.cancel != nil {
		ls.cancel()
	}
}

// giveUpVerification settles queued chunks that no node can give a
// further opinion on for NodeTTL: a lone result is stored unverified; two
// disagreeing ones are dropped and the chunk redone.
// It runs on the loop's tick; the node scan stops at the first candidate
// and only chunks queued for NodeTTL reach it.
func (l *loop) giveUpVerification(now time.Time) {
	if l.cfg.SelfVerify {
		return
	}
	kept := l.verifyQ[:0]
	for _, cs := range l.verifyQ {
		if len(cs.leases) > 0 || now.Sub(cs.queuedAt) < l.cfg.NodeTTL || l.hasCandidate(cs, now) {
			kept = append(kept, cs)
			continue
		}
		cs.inVerifyQ = false
		if len(cs.held) == 1 {
			l.skipped++
			l.c.log.Warn("no second node to verify a chunk; stored unverified", "chunk", short(cs.ch.ID))
			l.storeAsync(cs, cs.held[0].node, cs.held[0].entries, false)
			continue
		}
		l.unsettle(cs, "no third node to settle a disagreement")
	}
	clear(l.verifyQ[len(kept):])
	l.verifyQ = kept
}

// hasCandidate reports whether an eligible node that may take cs has not
// voted on it.
func (l *loop) hasCandidate(cs *chunkState, now time.Time) bool {
	for _, s := range l.nodes {
		if l.eligible(s, now) && !cs.voters[s.id] && s.fits(cs) {
			return true
		}
	}
	return false
}

// launch starts a lease's goroutine: the RPC under the lease's deadline.
func (l *loop) launch(ctx context.Context, ls *lease) {
	lctx, cancel := context.WithTimeout(ctx, ls.timeout)
	ls.cancel = cancel
	l.running++
	go l.runLease(lctx, ls)
}

// selfHook is assign's taker of second opinions when the coordinator
// computes them itself (nil: nodes give them).
func (l *loop) selfHook() func(*chunkState) bool {
	if !l.cfg.SelfVerify || l.job.model == nil {
		return nil
	}
	return func(cs *chunkState) bool {
		if l.selfBusy {
			return false
		}
		l.selfVerify(cs)
		return true
	}
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
			if err := l.c.put(l.job, ls.cs.ch, entries, ls.node.id.String(), false); err != nil {
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
	if (cs.force || l.rng.Float64() < p) && l.canVerify(ls.node, cs) {
		l.vs.Sampled++
		ls.verdict = vHold
		cs.phase = phVerify
		return claimReply{kind: vHold}
	}
	ls.verdict = vStore
	cs.phase = phStoring
	return claimReply{kind: vStore}
}

// canVerify reports whether a second opinion on s's result for cs can be
// had.
func (l *loop) canVerify(s *nodeState, cs *chunkState) bool {
	if l.cfg.SelfVerify {
		return true
	}
	now := time.Now()
	for _, o := range l.nodes { // stops at the first: O(1) while most nodes are eligible
		if o != s && l.eligible(o, now) && o.fits(cs) {
			return true
		}
	}
	return false
}

// finish applies one lease's outcome.
func (l *loop) finish(ev finishEv) error {
	ls, s, cs := ev.l, ev.l.node, ev.l.cs
	l.end(ls, ev.end)
	l.bytes += ev.bytes
	got := ls.verdict == vHold && ev.entries != nil || ev.stored
	if got {
		l.computed += int64(ls.tokens)
		if ls.opinion {
			l.verifyTokens += int64(ls.tokens)
		}
		l.delivered(ls, ev.end)
	}
	switch {
	case ev.stored && s.banned:
		// Banned while its unverified result was being written.
		if err := l.c.drop(l.job, cs.ch); err != nil {
			return fmt.Errorf("coordinator.Collect: drop a banned node's chunk: %w", err)
		}
		l.vs.Dropped++
		cs.phase, cs.force = phPending, true
		l.pending.pushBack(cs)
		return nil
	case ev.stored:
		l.chunkDone(cs, s, false)
		return nil
	case ls.verdict == vStore: // our cache write failed, not the node
		cs.phase = phPending
		cs.attempts++
		l.pending.pushFront(cs)
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
	l.shrink(s, time.Now())
	log := l.c.log.With("node", s.id.String(), "chunk", short(cs.ch.ID))
	if ls.canceled == "banned" {
		l.requeue(cs, ls.opinion)
		return nil
	}
	var perr *protocol.Error
	if errors.As(err, &perr) && perr.Kind == protocol.KindTooLarge {
		// The node's memory limit is below this chunk: no chunk as large
		// goes to it again in this job (the layers, and so the memory per
		// token, are the job's); others take it. Not a fault.
		if s.maxTokens == 0 || ls.tokens-1 < s.maxTokens {
			s.maxTokens = ls.tokens - 1
		}
		log.Warn("node cannot take chunks this large; leased elsewhere", "tokens", ls.tokens, "node_max_tokens", s.maxTokens, "why", perr.Msg)
		l.requeue(cs, ls.opinion)
		return nil
	}
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
		l.expired(ls, time.Now())
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

// requeue puts a chunk whose lease failed back in line (sched.requeue).
func (l *loop) requeue(cs *chunkState, opinion bool) { l.sched.requeue(cs, opinion, time.Now()) }

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
	l.queueVerify(cs, time.Now())
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
	l.pending.pushBack(cs)
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
		err := l.c.put(l.job, cs.ch, entries, by.id.String(), verified)
		l.events <- storedEv{cs: cs, node: by, err: err}
	}()
}

func (l *loop) stored(ev storedEv) error {
	if ev.err != nil {
		ev.cs.attempts++
		ev.cs.phase, ev.cs.voters = phPending, nil
		l.pending.pushFront(ev.cs)
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
		if err := l.c.drop(l.job, cs.ch); err != nil {
			l.c.log.Warn("could not drop a banned node's chunk", "chunk", short(cs.ch.ID), "err", err)
			continue
		}
		cs.phase, cs.storedBy, cs.voters, cs.force = phPending, nil, nil, true
		l.done--
		l.tokens -= int64(cs.ch.Tokens())
		s.done--
		l.pending.pushBack(cs)
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
			l.pending.pushBack(cs)
		}
	}
	l.touch(s, time.Now())
	l.c.log.Warn("node banned for this job", "node", s.id.String(), "reason", reason, "chunks_dropped", dropped)
}

// selfVerify computes a second opinion on the coordinator's own base.
func (l *loop) selfVerify(cs *chunkState) {
	l.selfBusy = true
	l.running++
	held := append([]heldResult(nil), cs.held...)
	go func() {
		ev := selfEv{cs: cs}
		ev.entries, ev.err = l.c.selfCompute(l.job, cs.ch)
		if ev.err == nil {
			for _, h := range held {
				st, err := compareEntries(l.job.Codec, l.cfg.VerifyKernelRel, ev.entries, h.entries)
				ev.cmps = append(ev.cmps, comparison{node: h.node, stats: st, err: err})
			}
		}
		l.events <- ev
	}()
}

// selfCompute runs the chunk through the job's base and codec.
func (c *Coordinator) selfCompute(job embedJob, ch *dataset.Chunk) ([][]Entry, error) {
	out := make([][]Entry, len(job.Layers))
	for i := range out {
		out[i] = make([]Entry, len(ch.Seqs))
	}
	for si, sq := range ch.Seqs {
		hs, err := job.model.Forward(sq.Tokens, job.Layers)
		if err != nil {
			return nil, fmt.Errorf("self-verify: %w", err)
		}
		for li := range job.Layers {
			rows, d := len(sq.Tokens), job.Dim
			out[li][si] = Entry{Rows: rows, Dim: d, Data: job.Codec.Encode(nil, hs[li], rows, d)}
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
		err := l.c.put(l.job, cs.ch, ev.entries, "", true)
		l.events <- storedEv{cs: cs, err: err}
	}()
	return nil
}
