package coordinator

// A simulated swarm in one process with virtual time: thousands of
// volunteers of different speeds join, advertise, compute leases and
// leave, and the scheduler core (sched, the code the loop runs) decides
// every lease. Nothing else of the coordinator runs: no libp2p, no store,
// no verification (VerifyFraction off, as in BenchmarkSwarm). The wall
// time of each event's scheduling work is measured; a single-server queue
// fed with those times at the simulated arrival times gives the latency
// a coordinator on one core would add to each lease.
//
// scanSched below is a copy of the scheduler as it was before the
// indexes (every assign scanned and sorted every node; a failed chunk was
// prepended by copying the queue), kept only so that the benchmark can
// compare both in the same run.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/dataset"
	"carryon/protocol"
	"carryon/tensor"
)

// simCore is what the simulation drives: the indexed core or the old scan.
type simCore interface {
	add(cs *chunkState) // a chunk of the job, at the back of the queue
	join(s *nodeState)
	advert(s *nodeState, a *protocol.Advert, now time.Time)
	assign(now time.Time, launch func(*lease))
	end(ls *lease, now time.Time)
	delivered(ls *lease, now time.Time)
	expired(ls *lease, now time.Time)
	requeue(cs *chunkState, now time.Time)
	left(s *nodeState, now time.Time) // after its leases ended
	pendingLen() int
	speculated() int
}

// indexedCore adapts sched.
type indexedCore struct{ q *sched }

func (c indexedCore) add(cs *chunkState) { c.q.pending.pushBack(cs) }
func (c indexedCore) join(s *nodeState)  { c.q.add(s) }
func (c indexedCore) advert(s *nodeState, a *protocol.Advert, now time.Time) {
	c.q.observe(s, a, true, now)
}
func (c indexedCore) assign(now time.Time, launch func(*lease)) { c.q.assign(now, launch, nil) }
func (c indexedCore) end(ls *lease, now time.Time)              { c.q.end(ls, now) }
func (c indexedCore) delivered(ls *lease, now time.Time)        { c.q.delivered(ls, now) }
func (c indexedCore) expired(ls *lease, now time.Time)          { c.q.expired(ls, now) }
func (c indexedCore) requeue(cs *chunkState, now time.Time)     { c.q.requeue(cs, false, now) }
func (c indexedCore) left(s *nodeState, now time.Time)          { c.q.touch(s, now) }
func (c indexedCore) pendingLen() int                           { return c.q.pendingLen() }
func (c indexedCore) speculated() int                           { return c.q.speculative }

// simSpec describes one simulated swarm.
type simSpec struct {
	nodes, chunks int
	chunkTokens   int           // tokens per chunk
	churnPerMin   float64       // fraction of nodes that leave (and are replaced) per minute
	pausedFrac    float64       // nodes advertising FreeSlots 0 all along
	hangFrac      float64       // nodes that take leases and never answer
	maxChunks     int           // stop after this many chunks (0: all)
	maxWork       time.Duration // stop after this much scheduling time (0: no limit)
	advertEvery   time.Duration
	seed          uint64
}

// simResult is what one run measured.
type simResult struct {
	events, leases, done, expired, left, joined int
	speculative                                 int
	work                                        time.Duration // CPU time inside the scheduler (wall time without a thread clock)
	wall                                        time.Duration // wall time inside the scheduler
	threadClock                                 bool          // work is the thread's CPU time
	virtual                                     time.Duration // simulated time to finish
	perEvent                                    []time.Duration
	latency                                     []time.Duration // per lease: queueing + work on one core
	bytesPerNode                                float64
	chunkRuns                                   []int // times each chunk was delivered (first result wins)
	pausedLeases                                int   // leases given to nodes advertising FreeSlots 0
	fastShare                                   float64
	heapBytes                                   uint64
}

// The speeds of the swarm, tokens per second of a 0.5B-class base: CPUs
// to H100s, as volunteers might bring them.
var simClasses = []struct {
	name  string
	tps   float64
	share float64
}{
	{"cpu", 400, 0.40}, {"apple-m", 3000, 0.20}, {"rtx3060", 8000, 0.20},
	{"rtx4090", 25000, 0.12}, {"a100", 40000, 0.05}, {"h100", 60000, 0.03},
}

type simNode struct {
	s         *nodeState
	tps       float64 // true speed
	class     int
	alive     bool
	paused    bool
	hang      bool
	busyUntil time.Time
	inflight  int
	delivered int
}

const simNodeSlots = 8 // the node's own capacity (its FreeSlots when idle)

type simEvent struct {
	at   time.Time
	kind uint8
	n    *simNode
	ls   *lease
	seq  uint64
	pos  int
}

const (
	evResult uint8 = iota
	evExpire
	evAdvert
	evLeave
)

// runSim runs one simulated swarm on the core mk makes; connected tells
// the core which peers are connected.
func runSim(spec simSpec, mk func(connected func(peer.ID) bool) simCore) simResult {
	connected := map[peer.ID]bool{}
	core := mk(func(p peer.ID) bool { return connected[p] })
	rng := rand.New(rand.NewPCG(spec.seed, 7))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	var res simResult
	var seq uint64
	evq := newHeap(func(a, b *simEvent) bool {
		if !a.at.Equal(b.at) {
			return a.at.Before(b.at)
		}
		return a.seq < b.seq
	}, func(e *simEvent) *int { return &e.pos })
	push := func(at time.Time, kind uint8, n *simNode, ls *lease) {
		seq++
		evq.set(&simEvent{at: at, kind: kind, n: n, ls: ls, seq: seq, pos: -1})
	}

	// Chunks share one token array: only their count matters here.
	seqs := []dataset.Example{{Tokens: make([]int32, spec.chunkTokens)}}
	chunks := make([]*chunkState, spec.chunks)
	for i := range chunks {
		chunks[i] = &chunkState{ch: &dataset.Chunk{ID: fmt.Sprintf("%08x", i), Seqs: seqs}}
		core.add(chunks[i])
	}
	res.chunkRuns = make([]int, spec.chunks)
	index := map[*chunkState]int{}
	for i, cs := range chunks {
		index[cs] = i
	}

	byNode := map[*nodeState]*simNode{}
	var alive []*simNode
	nextID := 0
	newNode := func(at time.Time) *simNode {
		nextID++
		h := sha256.Sum256(fmt.Appendf(nil, "sim node %d %d", spec.seed, nextID))
		id := peer.ID(h[:16])
		u, class := rng.Float64(), 0
		for i, c := range simClasses {
			if u < c.share {
				class = i
				break
			}
			u -= c.share
		}
		n := &simNode{tps: simClasses[class].tps, class: class, alive: true,
			paused: rng.Float64() < spec.pausedFrac, hang: rng.Float64() < spec.hangFrac}
		n.s = &nodeState{id: id, aimd: 2} // LeasesPerNode's default, as loop.node does
		byNode[n.s] = n
		connected[id] = true
		alive = append(alive, n)
		core.join(n.s)
		push(at.Add(time.Duration(rng.Float64()*float64(2*time.Second))), evAdvert, n, nil)
		res.joined++
		return n
	}
	advertOf := func(n *simNode, at time.Time) *protocol.Advert {
		free := max(0, simNodeSlots-n.inflight)
		if n.paused {
			free = 0
		}
		// A node advertises its own measure of its speed, within ±20%.
		return &protocol.Advert{V: protocol.Version, Peer: n.s.id.String(), TokensPerSec: n.tps * (0.8 + 0.4*rng.Float64()),
			FreeSlots: free, Device: simClasses[n.class].name, UnixMilli: at.UnixMilli()}
	}

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range spec.nodes {
		newNode(now)
	}
	if spec.churnPerMin > 0 {
		rate := float64(spec.nodes) * spec.churnPerMin / 60 // leaves per second
		push(now.Add(time.Duration(rng.ExpFloat64()/rate*float64(time.Second))), evLeave, nil, nil)
	}

	fastest := len(simClasses) - 1
	var fastChunks, allChunks int
	coordFree := now
	launch := func(ls *lease) {
		n := byNode[ls.node]
		res.leases++
		if n.paused {
			res.pausedLeases++
		}
		n.inflight++
		if n.hang {
			push(now.Add(ls.timeout), evExpire, n, ls)
			return
		}
		start := now
		if n.busyUntil.After(start) {
			start = n.busyUntil
		}
		d := time.Duration(float64(ls.tokens) / n.tps * (0.9 + 0.2*rng.Float64()) * float64(time.Second))
		n.busyUntil = start.Add(d)
		push(n.busyUntil, evResult, n, ls)
		push(now.Add(ls.timeout), evExpire, n, ls)
	}
	// leave: the node's connection drops; its leases fail at once.
	leave := func(n *simNode) {
		n.alive = false
		connected[n.s.id] = false
		for _, ls := range slices.Clone(n.s.leases) {
			core.end(ls, now)
			core.requeue(ls.cs, now)
		}
		core.left(n.s, now)
		res.left++
	}
	// Each event's scheduling work is timed by the thread's CPU clock
	// (this machine is shared: wall time includes other processes' turns),
	// less the clock's own cost, calibrated here.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, res.threadClock = threadCPU()
	clock := func() time.Duration {
		if res.threadClock {
			d, _ := threadCPU()
			return d
		}
		return time.Duration(time.Now().UnixNano())
	}
	var overhead time.Duration
	{
		ds := make([]time.Duration, 1001)
		for i := range ds {
			a := clock()
			ds[i] = clock() - a
		}
		overhead = quantile(ds, 0.5)
	}
	var memDone bool
	for evq.len() > 0 && res.done < spec.chunks {
		if spec.maxChunks > 0 && res.done >= spec.maxChunks || spec.maxWork > 0 && res.work >= spec.maxWork {
			break
		}
		ev := evq.pop()
		now = ev.at
		n := ev.n
		if !memDone && now.Sub(t0) > 3*time.Second { // every node has advertised
			memDone = true
			var after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&after)
			res.bytesPerNode = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(len(byNode))
		}
		// Events the coordinator would not see: a dead node's timers,
		// results of leases already ended.
		switch ev.kind {
		case evResult, evExpire:
			if ev.ls.ended || !n.alive {
				if ev.kind == evResult {
					n.inflight--
				}
				continue
			}
		case evAdvert:
			if !n.alive {
				continue
			}
		}
		leasesBefore := res.leases
		w0, c0 := time.Now(), clock()
		switch ev.kind {
		case evResult:
			n.inflight--
			ls := ev.ls
			cs := ls.cs
			core.end(ls, now)
			core.delivered(ls, now)
			if cs.phase != phDone {
				cs.phase = phDone
				res.done++
				res.chunkRuns[index[cs]]++
				n.delivered++
				allChunks++
				if n.class == fastest {
					fastChunks++
				}
				for _, o := range slices.Clone(cs.leases) { // first result wins
					core.end(o, now)
				}
			}
		case evExpire:
			res.expired++
			core.end(ev.ls, now)
			core.expired(ev.ls, now)
			core.requeue(ev.ls.cs, now)
		case evAdvert:
			core.advert(n.s, advertOf(n, now), now)
			push(now.Add(spec.advertEvery), evAdvert, n, nil)
		case evLeave:
			live := alive[:0]
			for _, a := range alive {
				if a.alive {
					live = append(live, a)
				}
			}
			alive = live
			if len(alive) > 0 {
				leave(alive[rng.IntN(len(alive))])
			}
			newNode(now) // a newcomer replaces it
			rate := float64(spec.nodes) * spec.churnPerMin / 60
			push(now.Add(time.Duration(rng.ExpFloat64()/rate*float64(time.Second))), evLeave, nil, nil)
		}
		core.assign(now, launch)
		d := max(0, clock()-c0-overhead)
		res.wall += time.Since(w0)
		res.events++
		res.work += d
		res.perEvent = append(res.perEvent, d)
		start := now
		if coordFree.After(start) {
			start = coordFree
		}
		coordFree = start.Add(d)
		for range res.leases - leasesBefore {
			res.latency = append(res.latency, coordFree.Sub(now))
		}
	}
	res.virtual = now.Sub(t0)
	res.speculative = core.speculated()
	if allChunks > 0 {
		res.fastShare = float64(fastChunks) / float64(allChunks)
	}
	var end runtime.MemStats
	runtime.ReadMemStats(&end)
	res.heapBytes = end.HeapAlloc
	return res
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func newIndexed(spec simSpec, connected func(peer.ID) bool) *sched {
	q := newSched(simConfig(), connected)
	q.unit = float64(spec.chunkTokens)
	return &q
}

func simConfig() Config {
	cfg := Config{MinNodes: 1, VerifyFraction: -1}.withDefaults()
	return cfg
}

// TestSimSwarm runs a small simulated swarm on the indexed core: every
// chunk is delivered, nodes advertising FreeSlots 0 get nothing, hung
// nodes' leases expire and are redone, and the fastest class does more
// per node than its share of nodes.
func TestSimSwarm(t *testing.T) {
	spec := simSpec{nodes: 300, chunks: 20000, chunkTokens: 2048, churnPerMin: 0.05, pausedFrac: 0.05,
		hangFrac: 0.01, advertEvery: 20 * time.Second, seed: 1}
	var q *sched
	res := runSim(spec, func(c func(peer.ID) bool) simCore { q = newIndexed(spec, c); return indexedCore{q} })
	if res.done != spec.chunks {
		t.Fatalf("%d of %d chunks done after %v virtual", res.done, spec.chunks, res.virtual)
	}
	for i, n := range res.chunkRuns {
		if n != 1 {
			t.Fatalf("chunk %d delivered %d times", i, n)
		}
	}
	if res.pausedLeases != 0 {
		t.Fatalf("%d leases went to nodes advertising FreeSlots 0", res.pausedLeases)
	}
	if res.expired == 0 || res.left == 0 {
		t.Fatalf("no lease expired (%d) or no node left (%d): the run did not exercise them", res.expired, res.left)
	}
	if q.leasedN != 0 && q.pendingLen() != 0 {
		t.Fatalf("leases in flight %d, pending %d at the end", q.leasedN, q.pendingLen())
	}
	// H100s are 3% of nodes and ~20% of the raw speed.
	if res.fastShare < 0.10 {
		t.Fatalf("the fastest class did %.1f%% of the chunks", 100*res.fastShare)
	}
	t.Logf("%d events, %d leases, %d expired, %d left, virtual %v, fastest class %.1f%% of chunks, %v per event",
		res.events, res.leases, res.expired, res.left, res.virtual.Round(time.Millisecond), 100*res.fastShare,
		res.work/time.Duration(res.events))
}

// TestSimSwarmSameAsScan: on a small swarm without churn the indexed core
// and the old scan both deliver every chunk once (the comparison in
// BenchmarkSimSwarm compares like with like).
func TestSimSwarmSameAsScan(t *testing.T) {
	spec := simSpec{nodes: 50, chunks: 3000, chunkTokens: 2048, advertEvery: 20 * time.Second, seed: 2}
	a := runSim(spec, func(c func(peer.ID) bool) simCore { return indexedCore{newIndexed(spec, c)} })
	b := runSim(spec, func(c func(peer.ID) bool) simCore { return newScanSched(simConfig(), c) })
	for _, r := range []simResult{a, b} {
		if r.done != spec.chunks {
			t.Fatalf("%d of %d chunks done", r.done, spec.chunks)
		}
	}
	// Both keep the swarm busy: the job takes about as long.
	if ra := a.virtual.Seconds() / b.virtual.Seconds(); ra > 1.25 || ra < 0.8 {
		t.Fatalf("indexed took %v, scan %v of virtual time", a.virtual, b.virtual)
	}
	t.Logf("virtual time: indexed %v, scan %v", a.virtual.Round(time.Millisecond), b.virtual.Round(time.Millisecond))
}

// BenchmarkSimSwarm: 10,000 simulated volunteers (CPUs to H100s, 1% churn
// a minute, 0.5% paused, 0.2% hung), 1 M chunks of 2,048 tokens; -short:
// 1,000 nodes, 50,000 chunks. The old scan-based scheduler runs the same
// swarm until it has spent 20 s (-short: 5 s) scheduling. One op is the
// whole run (use -benchtime 1x).
func BenchmarkSimSwarm(b *testing.B) {
	nodes, chunks, scanWork := 10000, 1000000, 20*time.Second
	if testing.Short() {
		nodes, chunks, scanWork = 1000, 50000, 5*time.Second
	}
	for _, kind := range []string{"indexed", "scan"} {
		b.Run(fmt.Sprintf("sched=%s/nodes=%d", kind, nodes), func(b *testing.B) {
			for range b.N {
				spec := simSpec{nodes: nodes, chunks: chunks, chunkTokens: 2048, churnPerMin: 0.01, pausedFrac: 0.005,
					hangFrac: 0.002, advertEvery: 20 * time.Second, seed: 42}
				mk := func(c func(peer.ID) bool) simCore { return indexedCore{newIndexed(spec, c)} }
				if kind == "scan" {
					spec.maxWork = scanWork
					mk = func(c func(peer.ID) bool) simCore { return newScanSched(simConfig(), c) }
				}
				b.ResetTimer()
				res := runSim(spec, mk)
				b.StopTimer()
				perEvent := res.work / time.Duration(max(1, res.events))
				b.ReportMetric(float64(perEvent.Nanoseconds())/1e3, "µs/event")
				b.ReportMetric(float64(res.work.Nanoseconds())/1e3/float64(max(1, res.done)), "µs/chunk")
				b.ReportMetric(float64(res.done)/res.work.Seconds(), "chunks/s-core")
				b.ReportMetric(float64(res.done)/res.virtual.Seconds(), "chunks/s-swarm")
				b.ReportMetric(res.work.Seconds()/res.virtual.Seconds(), "cores")
				b.ReportMetric(float64(quantile(res.perEvent, 0.99).Nanoseconds())/1e3, "p99-µs/event")
				b.ReportMetric(float64(quantile(res.latency, 0.99).Nanoseconds())/1e3, "p99-µs/lease")
				b.ReportMetric(res.bytesPerNode, "B/node")
				b.ReportMetric(float64(res.done), "chunks")
				b.ReportMetric(res.wall.Seconds()/res.work.Seconds(), "wall/cpu")
				b.Logf("thread CPU clock: %v", res.threadClock)
				b.Logf("%s: %d nodes (%d joined, %d left), %d/%d chunks in %v virtual, %d events, %d leases, %d expired, "+
					"%d speculative; %v scheduling (%.1f µs/event, p50 %v p99 %v p99.9 %v); lease latency on one core p50 %v p99 %v max %v; "+
					"%.0f B/node; heap %d MB",
					kind, nodes, res.joined, res.left, res.done, chunks, res.virtual.Round(time.Millisecond), res.events, res.leases,
					res.expired, res.speculative, res.work.Round(time.Millisecond), float64(perEvent.Nanoseconds())/1e3,
					quantile(res.perEvent, 0.5), quantile(res.perEvent, 0.99), quantile(res.perEvent, 0.999),
					quantile(res.latency, 0.5), quantile(res.latency, 0.99), quantile(res.latency, 1),
					res.bytesPerNode, res.heapBytes>>20)
			}
		})
	}
}

// scanSched is the scheduler before the indexes (coordinator/sched.go at
// 8f5a50c, its assign, startLease, requeue and the bookkeeping of finish
// and failed), for BenchmarkSimSwarm's comparison only. Every assign
// walks every node, checks its eligibility (the advert's base and codec
// parsed each time), sorts the speeds for the median and the ready nodes
// by speed; a failed chunk is prepended by copying the pending queue.
type scanSched struct {
	cfg         Config
	l           *loop // serves(): the old per-call advert check
	connected   func(peer.ID) bool
	nodes       map[peer.ID]*nodeState
	pending     []*chunkState
	typical     time.Duration
	started     bool
	speculative int
}

func newScanSched(cfg Config, connected func(peer.ID) bool) *scanSched {
	h := sha256.Sum256([]byte("sim base"))
	job := embedJob{ID: "sim", Base: hex.EncodeToString(h[:]), Dim: 896, Layers: []int{-1}, Codec: tensor.Codec{Bits: 8}}
	return &scanSched{cfg: cfg, l: &loop{job: job}, connected: connected, nodes: map[peer.ID]*nodeState{}}
}

func (o *scanSched) add(cs *chunkState) { o.pending = append(o.pending, cs) }
func (o *scanSched) join(s *nodeState)  { o.nodes[s.id] = s }
func (o *scanSched) advert(s *nodeState, a *protocol.Advert, now time.Time) {
	a.Bases = []protocol.BaseInfo{{Name: "sim", WeightsHash: o.l.job.Base, Arch: "qwen2", Dim: 896, Layers: 24, Vocab: 151936}}
	a.Codecs = []string{"q8"}
	s.advert, s.seen = a, now
}
func (o *scanSched) pendingLen() int { return len(o.pending) }
func (o *scanSched) speculated() int { return o.speculative }

func (o *scanSched) eligible(s *nodeState, now time.Time) bool {
	return !s.banned && s.advert != nil && now.Sub(s.seen) < o.cfg.NodeTTL && o.l.serves(s.advert) && o.connected(s.id)
}

func (o *scanSched) capOf(s *nodeState, median float64) int {
	c := o.cfg.LeasesPerNode
	if sp := s.speed(); sp > 0 && median > 0 {
		c = int(float64(o.cfg.LeasesPerNode)*sp/median + 0.5)
	}
	return max(1, min(c, 4*o.cfg.LeasesPerNode, s.aimd))
}

func (o *scanSched) deadline(s *nodeState, tokens int) (expect, timeout time.Duration) {
	q := sched{cfg: o.cfg, typical: o.typical}
	return q.deadline(s, tokens)
}

func (o *scanSched) assign(now time.Time, launch func(*lease)) {
	var ready []*nodeState
	var speeds []float64
	for _, s := range o.nodes {
		if o.eligible(s, now) {
			if sp := s.speed(); sp > 0 {
				speeds = append(speeds, sp)
			}
			if now.After(s.backoff) {
				ready = append(ready, s)
			}
		}
	}
	if !o.started && len(ready) < o.cfg.MinNodes {
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
	spare := func(s *nodeState) bool { return len(s.leases) < o.capOf(s, median) }
	for _, s := range ready {
		for tries := len(o.pending); tries > 0 && len(o.pending) > 0 && spare(s); tries-- {
			cs := o.pending[0]
			o.pending = o.pending[1:]
			if cs.phase != phPending {
				continue
			}
			o.start(s, cs, false, false, now, launch)
		}
	}
	if len(o.pending) > 0 {
		return
	}
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
	for _, s := range o.nodes {
		for _, ls := range s.leases {
			exp := ls.expect
			if exp <= 0 {
				exp = o.typical
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
				o.speculative++
				o.start(s, cs, lt.ls.opinion, true, now, launch)
				idle = append(idle[:i], idle[i+1:]...)
				break
			}
		}
		if len(idle) == 0 {
			return
		}
	}
}

func (o *scanSched) start(s *nodeState, cs *chunkState, opinion, spec bool, now time.Time, launch func(*lease)) {
	tokens := cs.ch.Tokens()
	expect, timeout := o.deadline(s, tokens)
	ls := &lease{node: s, cs: cs, opinion: opinion, spec: spec, tokens: tokens, start: now, expect: expect, timeout: timeout}
	ls.hold()
	o.started = true
	launch(ls)
}

func (o *scanSched) end(ls *lease, now time.Time) {
	if ls.ended {
		return
	}
	ls.ended = true
	ls.node.leases = removeLease(ls.node.leases, ls)
	ls.cs.leases = removeLease(ls.cs.leases, ls)
	ls.node.queued -= ls.tokens
}

func (o *scanSched) delivered(ls *lease, end time.Time) {
	o.typical = ewma(o.typical, end.Sub(ls.start))
	ls.node.succeeded(ls, end, 4*o.cfg.LeasesPerNode)
}

func (o *scanSched) expired(ls *lease, now time.Time) {
	ls.node.tps /= 2
	ls.node.backoff = now.Add(o.cfg.MinLeaseTimeout / 4)
}

func (o *scanSched) requeue(cs *chunkState, now time.Time) {
	if len(cs.leases) > 0 || cs.phase == phDone || cs.phase == phStoring {
		return
	}
	cs.phase = phPending
	o.pending = append([]*chunkState{cs}, o.pending...)
}

func (o *scanSched) left(s *nodeState, now time.Time) {}
