// Status snapshots of the coordinator, for dashboards, the API and logs.

package coordinator

import (
	"sort"
	"time"

	"carryon/dataset"
)

// Progress is a snapshot of Collect, for logs and status displays.
type Progress struct {
	Done, Leased, Pending, Total int
	Nodes                        int // eligible nodes now
	Tokens                       int64
	// Waiting is true while leasing has not begun: fewer than
	// Config.MinNodes eligible nodes have joined.
	Waiting bool
}

// Status is a snapshot of the coordinator's view of the swarm and of the
// current (or last) Collect, for dashboards. It is a copy: safe to keep.
type Status struct {
	Time  time.Time
	Job   JobStatus
	Nodes []NodeStatus // sorted by peer ID
}

// JobStatus describes one Collect.
type JobStatus struct {
	ID                     string
	Total                  int   // distinct chunks in the data set
	CachedAtStart          int   // chunks already in the cache when Collect began
	Done                   int   // chunks in the cache
	Leased                 int   // leases in flight (speculative and verification ones included)
	Pending                int   // chunks waiting for a first lease
	Verifying              int   // chunks holding results that await a second (or third) opinion
	Tokens                 int64 // tokens of the chunks done in this Collect
	BytesReceived          int64 // bridged payload bytes received, every lease included
	Speculative            int   // duplicate leases started for the tail of the job
	Reassigned             int   // leases that failed (error, deadline, disconnect) and were redone
	Finished               bool
	Verify                 VerifyStatus
	ExtraComputeFraction   float64 // extra forward work over useful work; see extraFraction
	VerifyComputeFraction  float64 // tokens computed for second and third opinions, over useful work
	BaseTokens             int64   // tokens of one pass over the chunks not cached at start
	ComputedTokens         int64   // tokens of every result received
	SelfVerifiedChunks     int     // second opinions the coordinator computed itself
	VerificationSkipped    int     // sampled chunks stored unverified for want of a second node
	UnsettledDisagreements int     // three results, no two agreeing: all dropped and redone
	// Data says what reading the data file did to its records: how many
	// were read, used, cut to the sequence length and dropped, and why.
	Data dataset.Report
}

// VerifyStatus counts the verification of volunteers' work.
type VerifyStatus struct {
	Sampled       int // chunks picked for a second opinion
	Verified      int // chunks stored after two results agreed
	Disagreements int // comparisons that failed
	Bans          int // nodes banned for wrong results
	Dropped       int // unverified chunks of banned nodes removed from the cache and redone
}

// NodeStatus describes one node.
type NodeStatus struct {
	Peer               string
	Device             string
	TokensPerSec       float64 // measured from completed leases (0 until one completes)
	AdvertTokensPerSec float64 // what the node's advert claims
	Leases             int     // in flight now
	Cap                int     // in-flight cap now
	Chunks             int     // chunks of this node stored in the cache
	Opinions           int     // second or third opinions it delivered
	Verified           int     // its results that another node's agreed with
	Failures           int     // leases that failed on it (error, deadline, disconnect)
	SamplingRate       float64 // probability that its next chunk is verified
	Clean              int     // verified results in a row: its trust, kept across jobs and restarts
	Suspect            bool    // lost or could not settle a comparison (sampled at 4× the base rate)
	Eligible           bool
	Banned             bool
	BanReason          string
}

func (l *loop) snapshot() Progress {
	n := 0
	now := time.Now()
	for _, s := range l.nodes {
		if l.eligible(s, now) {
			n++
		}
	}
	return Progress{Done: l.done, Leased: l.leased(), Pending: l.pendingLen(), Total: l.total, Nodes: n, Tokens: l.tokens, Waiting: !l.started}
}

func (l *loop) leased() int { return l.leasedN }

// extraFraction is the forward work spent beyond the useful work, divided
// by the useful work. Useful work is the tokens of the chunks stored by
// this Collect (Tokens); the forward work is every result received from a
// node plus the coordinator's own opinions. The difference is second and
// third opinions, speculative duplicates, results that lost a race and
// chunks redone after a ban. 0 before any chunk is stored; never negative
// (every stored chunk was computed at least once).
func (l *loop) extraFraction() float64 {
	return extraFraction(l.tokens, l.computed+l.selfTokens)
}

func extraFraction(useful, work int64) float64 {
	if useful <= 0 {
		return 0
	}
	return float64(work-useful) / float64(useful)
}

// publish stores a Status snapshot: at most every 50 ms unless forced,
// and no more often than keeps its own cost (it walks every node and
// chunk) under 2% of the loop's time: with 10,000 nodes and a million
// chunks a publish costs milliseconds, so it then runs every few tenths
// of a second.
func (l *loop) publish(force bool) {
	now := time.Now()
	if !force && now.Sub(l.lastPublish) < max(50*time.Millisecond, l.publishEvery) {
		return
	}
	l.lastPublish = now
	defer func() { l.publishEvery = 50 * time.Since(now) }()
	st := &Status{Time: now, Job: JobStatus{ID: l.job.ID, Total: l.total, CachedAtStart: l.cachedAtStart,
		Done: l.done, Leased: l.leased(), Pending: l.pendingLen(), Tokens: l.tokens, BytesReceived: l.bytes,
		Speculative: l.speculative, Reassigned: l.reassigned, Finished: l.finished, Verify: l.vs,
		BaseTokens: l.baseTokens, ComputedTokens: l.computed, SelfVerifiedChunks: l.selfVerified,
		VerificationSkipped: l.skipped, UnsettledDisagreements: l.unsettled}}
	for _, cs := range l.chunks {
		if cs.phase == phVerify {
			st.Job.Verifying++
		}
	}
	if l.tokens > 0 {
		st.Job.ExtraComputeFraction = l.extraFraction()
		st.Job.VerifyComputeFraction = float64(l.verifyTokens) / float64(l.tokens)
	}
	for _, s := range l.nodes {
		ns := NodeStatus{Peer: s.id.String(), TokensPerSec: s.tps, Leases: len(s.leases), Cap: l.capacity(s),
			Chunks: s.done, Opinions: s.opinions, Verified: s.verified, Failures: s.failures,
			SamplingRate: samplingRate(l.cfg.VerifyFraction, s.clean, s.suspect), Clean: s.clean, Suspect: s.suspect,
			Eligible: l.eligible(s, now),
			Banned:   s.banned, BanReason: s.banReason}
		if s.advert != nil {
			ns.Device, ns.AdvertTokensPerSec = s.advert.Device, s.advert.TokensPerSec
		}
		st.Nodes = append(st.Nodes, ns)
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Peer < st.Nodes[j].Peer })
	l.c.status.Store(st)
}
