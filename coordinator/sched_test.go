package coordinator

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"carryon/dataset"
	"carryon/model"
	"carryon/node"
	"carryon/protocol"
	"carryon/swarm"
)

func collect(t *testing.T, c *Coordinator, ds *dataset.Set) Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Collect(ctx, ds, nil); err != nil {
		t.Fatal(err)
	}
	return c.Status()
}

func exactlyOnce(t *testing.T, ds *dataset.Set, stores *storeCounter) {
	t.Helper()
	for _, ch := range ds.All() {
		if n := stores.get(ch.ID); n != 1 {
			t.Fatalf("chunk %s entered the cache %d times", short(ch.ID), n)
		}
	}
}

// TestLeaseDeadline checks the deadline arithmetic: queued tokens plus
// the chunk's at the node's speed, ×4, plus MinLeaseTimeout/2, clamped.
func TestLeaseDeadline(t *testing.T) {
	l := &sched{cfg: Config{MinLeaseTimeout: time.Second, LeaseTimeout: time.Minute}}
	for _, tc := range []struct {
		tps            float64
		queued, tokens int
		typical        time.Duration
		expect, limit  time.Duration
	}{
		{tps: 1000, tokens: 2000, expect: 2 * time.Second, limit: 8500 * time.Millisecond},
		{tps: 1000, queued: 2000, tokens: 2000, expect: 4 * time.Second, limit: 16500 * time.Millisecond},
		{tps: 1e6, tokens: 100, expect: 100 * time.Microsecond, limit: time.Second}, // clamped up
		{tps: 1, tokens: 100, expect: 100 * time.Second, limit: time.Minute},        // clamped down
		{tps: 0, tokens: 100, typical: 3 * time.Second, expect: 3 * time.Second, limit: 12500 * time.Millisecond},
		{tps: 0, tokens: 100, expect: 0, limit: time.Minute}, // nothing known: the cap
	} {
		l.typical = tc.typical
		s := &nodeState{tps: tc.tps, queued: tc.queued}
		e, lim := l.deadline(s, tc.tokens)
		if e != tc.expect || lim != tc.limit {
			t.Errorf("%+v: expect %v limit %v, want %v %v", tc, e, lim, tc.expect, tc.limit)
		}
	}
}

// TestHangingNode: a node that accepts chunks and never answers does not
// stall the job: its leases are duplicated at the tail (or reassigned at
// their deadline), and every chunk is stored exactly once.
func TestHangingNode(t *testing.T) {
	ts := newTestSwarm(t)
	for i := range 2 {
		ts.addNode(newFakeBase(ts.base, 100*time.Microsecond, honest, uint64(i)), node.Config{})
	}
	hung := ts.addNode(newFakeBase(ts.base, 0, hang, 9), node.Config{})
	t.Cleanup(func() { close(hung.fb.release) })
	c, stores := ts.coordinator(Config{MinNodes: 3, LeaseTimeout: 5 * time.Second})
	ds := swarmDataset(2, 40, 4, 16)
	st := collect(t, c, ds)
	exactlyOnce(t, ds, stores)
	checkCache(t, c, ds, true)
	if st.Job.Speculative+st.Job.Reassigned == 0 {
		t.Fatalf("the hung node's chunks were neither duplicated nor reassigned: %+v", st.Job)
	}
	for _, n := range st.Nodes {
		if n.Peer == hung.h.ID().String() && n.Chunks != 0 {
			t.Fatalf("the hung node is credited with %d chunks", n.Chunks)
		}
	}
	t.Logf("hung node: %d speculative leases, %d reassigned", st.Job.Speculative, st.Job.Reassigned)
}

// TestThroughputWeighted: with fast and 20× slower nodes, the fast ones
// are measured faster, get a higher in-flight cap and do most chunks.
func TestThroughputWeighted(t *testing.T) {
	ts := newTestSwarm(t)
	var fast, slow []*testNode
	for i := range 2 {
		fast = append(fast, ts.addNode(newFakeBase(ts.base, 50*time.Microsecond, honest, uint64(i)), node.Config{MaxQueue: 8}))
		slow = append(slow, ts.addNode(newFakeBase(ts.base, time.Millisecond, honest, uint64(10+i)), node.Config{MaxQueue: 8}))
	}
	c, stores := ts.coordinator(Config{MinNodes: 4, VerifyFraction: -1})
	ds := swarmDataset(3, 150, 4, 16)
	st := collect(t, c, ds)
	exactlyOnce(t, ds, stores)
	byPeer := map[string]NodeStatus{}
	for _, n := range st.Nodes {
		byPeer[n.Peer] = n
	}
	var fc, sc int
	var ft, stps float64
	for _, n := range fast {
		fc += byPeer[n.h.ID().String()].Chunks
		ft += byPeer[n.h.ID().String()].TokensPerSec
	}
	for _, n := range slow {
		sc += byPeer[n.h.ID().String()].Chunks
		stps += byPeer[n.h.ID().String()].TokensPerSec
	}
	t.Logf("fast nodes: %d chunks, %.0f tokens/s measured; slow nodes: %d chunks, %.0f tokens/s", fc, ft/2, sc, stps/2)
	for _, n := range st.Nodes {
		t.Logf("  %s…: %d chunks, measured %.0f tok/s, advertised %.0f, cap %d", n.Peer[len(n.Peer)-6:], n.Chunks, n.TokensPerSec, n.AdvertTokensPerSec, n.Cap)
	}
	if fc <= 2*sc || ft <= 2*stps {
		t.Fatalf("fast nodes did %d chunks at %.0f tok/s, slow %d at %.0f", fc, ft, sc, stps)
	}
}

// rogueNode answers embedding requests with well-formed results for
// another job; it advertises like a real node.
func rogueNode(t *testing.T, ts *testSwarm) *testNode {
	h, topics := ts.newHost()
	info := newFakeBase(ts.base, 0, honest, 0).Info()
	h.SetStreamHandler(protocol.EmbedProtocol, func(s network.Stream) {
		defer s.Reset()
		req, err := protocol.ReadExpect[*protocol.EmbedRequest](s)
		if err != nil {
			return
		}
		for i, seq := range req.Seqs {
			for _, layer := range req.Layers {
				x := honestHidden(seq, layer, info.Dim)
				res := &protocol.EmbedResult{V: protocol.Version, JobID: "dead", ChunkID: req.ChunkID, Seq: i, Layer: layer,
					Codec: req.Codec, Rows: len(seq), Dim: info.Dim}
				c, _ := ts.coordCodec(req.Codec)
				res.Data = c.Encode(nil, x, len(seq), info.Dim)
				if protocol.WriteFrame(s, res) != nil {
					return
				}
			}
		}
		protocol.WriteFrame(s, &protocol.EmbedDone{V: protocol.Version, JobID: "dead", ChunkID: req.ChunkID, Results: len(req.Seqs) * len(req.Layers)})
		protocol.ReadExpect[*protocol.Ack](s)
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); h.Close() })
	// It advertises as a node does, on a period (gossip drops what is
	// published before the mesh forms; nothing says when it has formed).
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			a := &protocol.Advert{V: protocol.Version, Peer: h.ID().String(), Bases: []protocol.BaseInfo{info}, Codecs: []string{"q8"},
				TokensPerSec: 1e9, FreeSlots: 4, Device: "rogue", UnixMilli: time.Now().UnixMilli()}
			swarm.Publish(ctx, topics.Nodes, a)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return &testNode{h: h, topics: topics}
}

// TestWrongJobRejected: results for another job are rejected, never enter
// the cache, and get their sender banned; the job completes elsewhere.
func TestWrongJobRejected(t *testing.T) {
	ts := newTestSwarm(t)
	ts.addNode(newFakeBase(ts.base, 100*time.Microsecond, honest, 1), node.Config{})
	rogue := rogueNode(t, ts)
	c, stores := ts.coordinator(Config{MinNodes: 2})
	ds := swarmDataset(4, 30, 4, 16)
	st := collect(t, c, ds)
	exactlyOnce(t, ds, stores)
	checkCache(t, c, ds, true)
	for _, n := range st.Nodes {
		if n.Peer == rogue.h.ID().String() {
			if !n.Banned || n.Chunks != 0 {
				t.Fatalf("rogue node: %+v", n)
			}
			t.Logf("rogue node banned: %s", n.BanReason)
			return
		}
	}
	t.Fatal("the rogue node was never seen")
}

// TestSelfVerify: the coordinator holds the base and computes second
// opinions itself; nodes run the real model; a liar is banned at its
// first sampled chunk.
func TestSelfVerify(t *testing.T) {
	ts := newTestSwarm(t)
	for range 2 {
		ts.addNode(&realBase{Base: node.Serve(ts.base, "test")}, node.Config{})
	}
	liar := ts.addNode(&realBase{Base: node.Serve(ts.base, "test"), noise: 0.05}, node.Config{})
	c, stores := ts.coordinator(Config{MinNodes: 3, SelfVerify: true, VerifyFraction: 0.3})
	ds := swarmDataset(5, 45, 2, 16)
	st := collect(t, c, ds)
	if st.Job.SelfVerifiedChunks == 0 {
		t.Fatal("no chunk was self-verified")
	}
	banned := false
	for _, n := range st.Nodes {
		if n.Banned && n.Peer != liar.h.ID().String() {
			t.Fatalf("honest node banned: %s", n.BanReason)
		}
		banned = banned || n.Banned
	}
	if !banned {
		t.Fatal("the liar was not banned")
	}
	for _, ch := range ds.All() {
		got, err := c.cache.Get(c.key(model.FinalLayer, ch))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := c.selfCompute(c.primary(), ch)
		if st, err := compareEntries(c.codec, c.cfg.VerifyKernelRel, want[:1], [][]Entry{got}); err != nil || !st.agree() {
			t.Fatalf("chunk %s: wrong embeddings cached", short(ch.ID))
		}
	}
	t.Logf("self-verify: %d chunks checked by the coordinator, %d dropped, %d cache writes for %d chunks",
		st.Job.SelfVerifiedChunks, st.Job.Verify.Dropped, stores.total(), st.Job.Total)
}

// realBase runs the real model, optionally adding noise (a liar).
type realBase struct {
	node.Base
	noise float64
	n     int
}

func (r *realBase) Forward(ids []int32, layers []int) ([][]float32, error) {
	hs, err := r.Base.Forward(ids, layers)
	if err != nil || r.noise == 0 {
		return hs, err
	}
	r.n++
	for _, h := range hs {
		scale := r.noise * rmsOf(h)
		for i := range h {
			h[i] += float32(scale * float64((i*7919+r.n)%13-6) / 6)
		}
	}
	return hs, nil
}

var _ = fmt.Sprint

// sizedFake is a fakeBase that states its memory needs (node.SizedBase),
// so that a node's MaxMemory applies to it.
type sizedFake struct {
	*fakeBase
	perToken int64
}

func (s sizedFake) WeightBytes() int64          { return 1 }
func (s sizedFake) TokenBytes(layers int) int64 { return s.perToken * int64(layers) }

// TestNodeMemoryLimit: a node whose memory limit is below every chunk
// hands the chunks it is leased back with TooLarge; the coordinator leases
// no chunk as large to it again, the other node does them all, and each
// chunk is stored once.
func TestNodeMemoryLimit(t *testing.T) {
	ts := newTestSwarm(t)
	ds := swarmDataset(3, 30, 4, 16) // chunks of 64 tokens
	small := ts.addNode(sizedFake{newFakeBase(ts.base, 0, honest, 1), 1 << 10}, node.Config{MaxMemory: 1 + 32<<10})
	ts.addNode(newFakeBase(ts.base, 100*time.Microsecond, honest, 2), node.Config{})
	c, stores := ts.coordinator(Config{MinNodes: 2})
	st := collect(t, c, ds)
	exactlyOnce(t, ds, stores)
	ns := small.n.Status()
	warned := ts.warns.count("node cannot take chunks this large; leased elsewhere")
	// Every chunk has the same size: after its first refusal the node gets
	// none; refusals beyond one are leases already on their way.
	if ns.TooLarge < 1 || ns.TooLarge > 4*int64(c.cfg.LeasesPerNode) || ns.Chunks != 0 || int64(warned) != ns.TooLarge {
		t.Fatalf("the limited node refused %d chunks and finished %d; the coordinator warned %d times", ns.TooLarge, ns.Chunks, warned)
	}
	if st.Job.Reassigned != 0 {
		t.Errorf("refusals counted as failed attempts: %+v", st.Job)
	}
	t.Logf("limited node refused %d chunks, then got none; %d chunks done elsewhere", ns.TooLarge, len(ds.All()))
}
