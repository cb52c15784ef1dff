package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/protocol"
	"carryon/swarm"
	"carryon/tensor"
)

// Base is a frozen model the node serves. *model.Base satisfies it through
// Serve; tests wrap it to inject faults.
type Base interface {
	// Info names the base on the wire (its weights hash is its identity).
	Info() protocol.BaseInfo
	// Forward returns, for each requested layer, the hidden states (T, Dim)
	// of one sequence (see model.Base.Forward for the layer numbering).
	Forward(ids []int32, layers []int) ([][]float32, error)
}

// BatchBase is a Base that also runs several sequences in one pass (see
// model.Base.ForwardBatch); a Node uses it for every request with more than
// one sequence, which for short sequences is several times faster.
type BatchBase interface {
	Base
	// ForwardBatch returns Forward's result for each sequence.
	ForwardBatch(seqs [][]int32, layers []int) ([][][]float32, error)
}

// Stats are a node's counters since Start.
type Stats struct {
	Jobs         int64   // embedding jobs completed and acknowledged
	Computed     int64   // chunks run through a base (kept results answered again are not)
	Resent       int64   // jobs answered from a kept result, without computing
	Rejected     int64   // requests refused (bad input, wrong base, overload) or not acknowledged
	Tokens       int64   // tokens run through a base
	BytesSent    int64   // payload bytes of EmbedResult frames
	TokensPerSec float64 // measured forward throughput (moving average)
}

// Node is a volunteer peer. Create it with New, then Start it.
type Node struct {
	cfg    Config
	h      host.Host
	topics *swarm.Topics
	bases  map[string]Base // by weights hash
	codecs map[string]tensor.Codec
	log    *slog.Logger
	slots  chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // in-flight jobs
	adv    struct {       // the advert loop, stopped first by Close
		cancel context.CancelFunc
		done   chan struct{}
		kick   chan struct{} // advertise now (a coordinator joined the nodes topic)
		last   int64         // UnixMilli of the last advert (advert loop only)
	}
	offer struct { // the offer loop (keep.go)
		cancel context.CancelFunc
		done   chan struct{}
	}
	keep   *keeper
	keeper *swarm.Keeper // redials Config.Bootstrap

	coords sync.Map // peer.ID → struct{}: peers seen listening on the nodes topic or sending jobs

	mu      sync.Mutex
	closed  bool
	started bool

	ctl control  // pause state, memory budget, current jobs (pause.go)
	gov struct { // the conditions loop (Govern, conditions.go)
		poll  func()        // applies the conditions once; nil until Govern
		every time.Duration // how often
		done  chan struct{} // closed when the loop ends; nil until it starts
	}

	jobs, rejected, tokens, bytesSent atomic.Int64
	computed, resent                  atomic.Int64
	waiting                           atomic.Int64  // jobs queued for a slot
	tps                               atomic.Uint64 // float64 bits
}

// New checks the configuration and builds a node on h; topics may be nil
// (no adverts: the coordinator must be told about the node another way).
func New(h host.Host, topics *swarm.Topics, bases []Base, cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if len(bases) == 0 {
		return nil, errors.New("node.New: no base to serve")
	}
	n := &Node{cfg: cfg, h: h, topics: topics, bases: map[string]Base{}, codecs: map[string]tensor.Codec{},
		slots: make(chan struct{}, cfg.MaxJobs), keep: newKeeper(cfg.KeepResults, cfg.KeepFor)}
	for _, b := range bases {
		n.bases[b.Info().WeightsHash] = b
	}
	for _, s := range cfg.Codecs {
		c, _ := tensor.ParseCodec(s)
		n.codecs[c.String()] = c
	}
	n.log = cfg.Logger.With("component", "node", "peer", h.ID().String())
	n.ctl.init()
	if err := n.initMemory(bases); err != nil {
		return nil, err
	}
	return n, nil
}

// Start registers the embedding protocol and starts advertising. It may be
// called once.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started || n.closed {
		return errors.New("node.Start: already started or closed")
	}
	n.started = true
	n.ctx, n.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if n.gov.poll != nil { // Govern came first: its verdict holds from the first advert
		n.startGovern()
	}
	n.h.SetStreamHandler(protocol.EmbedProtocol, n.handleEmbed)
	octx, ocancel := context.WithCancel(n.ctx)
	n.offer.cancel, n.offer.done = ocancel, make(chan struct{})
	go n.offerLoop(octx)
	if n.topics != nil {
		actx, cancel := context.WithCancel(n.ctx)
		n.adv.cancel, n.adv.done, n.adv.kick = cancel, make(chan struct{}), make(chan struct{}, 1)
		fail := func(what string, err error) error {
			cancel()
			n.h.RemoveStreamHandler(protocol.EmbedProtocol)
			return fmt.Errorf("node.Start: %s: %w", what, err)
		}
		joins, err := n.topics.Nodes.EventHandler()
		if err != nil {
			return fail("watch the nodes topic", err)
		}
		go n.watchJoins(actx, joins)
		go n.advertLoop(actx)
		if n.topics.Control != nil {
			sub, err := n.topics.Control.Subscribe()
			if err != nil {
				return fail("subscribe to the control topic", err)
			}
			go n.watchJobs(actx, sub)
		}
	}
	for _, b := range n.bases {
		i := b.Info()
		n.log.Info("serving base", "name", i.Name, "base", i.WeightsHash[:12], "dim", i.Dim, "layers", i.Layers)
	}
	if len(n.cfg.Bootstrap) > 0 {
		rc := n.cfg.Redial
		rc.OnEvent = n.connEvent
		k, err := swarm.KeepConnected(n.ctx, n.h, n.cfg.Bootstrap, rc)
		if err != nil {
			return fmt.Errorf("node.Start: %w", err)
		}
		n.keeper = k
	}
	return nil
}

// role names p in logs: "coordinator" once p has listened on the nodes
// topic or sent a job, else "bootstrap peer".
func (n *Node) role(p peer.ID) string {
	if _, ok := n.coords.Load(p); ok {
		return "coordinator"
	}
	return "bootstrap peer"
}

// connEvent logs a change in the connection to a bootstrap peer.
func (n *Node) connEvent(e swarm.RedialEvent) {
	role := n.role(e.Peer)
	switch e.Kind {
	case swarm.Connected:
		if e.First {
			n.log.Info("connected to "+role, "remote", e.Peer.String(), "addr", e.Addr)
		} else {
			n.log.Info(role+" back", "remote", e.Peer.String(), "addr", e.Addr, "down", e.Down.Round(time.Millisecond), "dials", e.Attempts)
		}
	case swarm.Lost:
		n.log.Warn("lost the connection to "+role+"; redialling", "remote", e.Peer.String())
	case swarm.DialFailed:
		// The first failure, then every doubling of the count: a volunteer
		// sees that the node keeps trying without a line every few seconds.
		lvl := slog.LevelDebug
		if e.Attempts&(e.Attempts-1) == 0 {
			lvl = slog.LevelInfo
			if e.Attempts == 1 {
				lvl = slog.LevelWarn
			}
		}
		n.log.Log(n.ctx, lvl, "cannot reach "+role+"; retrying", "remote", e.Peer.String(), "dials", e.Attempts,
			"down", e.Down.Round(time.Second), "next_in", e.Wait.Round(time.Millisecond), "err", e.Err)
	}
}

// watchJoins advertises at once whenever a peer starts listening on the
// nodes topic (a coordinator starting a job, or one restarted), so that
// it need not wait an advert interval to see this node; an advert
// published before any coordinator listens reaches nobody.
func (n *Node) watchJoins(ctx context.Context, h *pubsub.TopicEventHandler) {
	defer h.Cancel()
	for {
		ev, err := h.NextPeerEvent(ctx)
		if err != nil {
			return
		}
		if ev.Type != pubsub.PeerJoin {
			continue
		}
		if _, seen := n.coords.LoadOrStore(ev.Peer, struct{}{}); !seen {
			n.log.Info("coordinator listening for nodes; advertising", "remote", ev.Peer.String())
		} else {
			n.log.Debug("coordinator listening for nodes again; advertising", "remote", ev.Peer.String())
		}
		select {
		case n.adv.kick <- struct{}{}:
		default:
		}
	}
}

// Close stops intake, waits for in-flight jobs (up to DrainTimeout), and
// stops advertising. A second call returns an error wrapping net.ErrClosed.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return fmt.Errorf("node.Close: %w", net.ErrClosed)
	}
	n.closed = true
	started := n.started
	n.mu.Unlock()
	if !started {
		return nil
	}
	n.h.RemoveStreamHandler(protocol.EmbedProtocol)
	if n.keeper != nil {
		n.keeper.Close()
	}
	done := make(chan struct{})
	if n.adv.cancel != nil { // stop advertising before draining
		n.adv.cancel()
		<-n.adv.done
	}
	n.offer.cancel()
	<-n.offer.done
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(n.cfg.DrainTimeout):
		n.log.Warn("jobs still running at close; aborting them")
	}
	n.cancel() // resets the jobs' streams; ends Govern's loop
	if n.gov.done != nil {
		<-n.gov.done
	}
	select {
	case <-done:
		return nil
	case <-time.After(time.Second): // a forward pass cannot be interrupted
		return errors.New("node.Close: jobs still running after the drain timeout; abandoned")
	}
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{Jobs: n.jobs.Load(), Computed: n.computed.Load(), Resent: n.resent.Load(), Rejected: n.rejected.Load(), Tokens: n.tokens.Load(),
		BytesSent: n.bytesSent.Load(), TokensPerSec: n.tokensPerSec()}
}

// watchJobs reads the coordinators' job announcements and says, once per
// coordinator and job, whether this node has work in it: a node serving
// another base than the job's would otherwise wait in silence.
func (n *Node) watchJobs(ctx context.Context, sub *pubsub.Subscription) {
	defer sub.Cancel()
	said := map[string]bool{}
	for {
		ja, from, err := swarm.NextGossip[*protocol.JobAnnounce](ctx, sub)
		if err != nil {
			return
		}
		if key := from.String() + "/" + ja.Job; !said[key] {
			if len(said) > 1024 {
				clear(said)
			}
			said[key] = true
			n.coords.LoadOrStore(from, struct{}{})
			log := n.log.With("remote", from.String(), "job", ja.Job, "job_base", ja.Base.Name+" ("+short(ja.Base.WeightsHash)+")", "codec", ja.Codec)
			_, serves := n.bases[ja.Base.WeightsHash]
			_, codec := n.codecs[ja.Codec]
			switch {
			case serves && codec:
				log.Info("coordinator's job runs on a base this node serves", "nodes_joined", ja.Joined, "chunks_pending", ja.Pending)
			case serves:
				log.Warn("coordinator's job needs a codec this node does not offer: no work for this node", "node_codecs", n.cfg.Codecs)
			default:
				var has []string
				for _, b := range n.bases {
					has = append(has, b.Info().Name+" ("+short(b.Info().WeightsHash)+")")
				}
				log.Warn("coordinator's job needs another base: no work for this node's base", "node_bases", strings.Join(has, ", "))
			}
		}
	}
}

// advertLoop republishes the node's advert every AdvertInterval.
func (n *Node) advertLoop(ctx context.Context) {
	defer close(n.adv.done)
	t := time.NewTicker(n.cfg.AdvertInterval)
	defer t.Stop()
	// After a kick the advert is repeated at these delays (when shorter
	// than the interval): a peer that has just reconnected under the same
	// peer ID may drop the first one while its old gossip stream is torn
	// down and a new one opened.
	followUps := []time.Duration{500 * time.Millisecond, 2 * time.Second, 5 * time.Second}
	burst := time.NewTimer(time.Hour)
	burst.Stop()
	defer burst.Stop()
	next := len(followUps)
	for {
		if err := swarm.Publish(ctx, n.topics.Nodes, n.advert()); err != nil && ctx.Err() == nil {
			n.log.Warn("advert not published", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.adv.kick:
			t.Reset(n.cfg.AdvertInterval)
			next = 0
		case <-burst.C:
		case <-n.ctl.changed: // paused or resumed: say so at once
		}
		if next < len(followUps) && followUps[next] < n.cfg.AdvertInterval {
			burst.Reset(followUps[next])
			next++
		}
	}
}

// advert describes what the node offers now. UnixMilli strictly increases
// from one advert to the next (the gossip validators ignore an advert no
// newer than the last), even for two adverts within a millisecond.
func (n *Node) advert() *protocol.Advert {
	ms := max(time.Now().UnixMilli(), n.adv.last+1)
	n.adv.last = ms
	free := cap(n.slots) + n.cfg.MaxQueue - len(n.slots) - int(n.waiting.Load())
	if reason, _ := n.pauseState(); reason != "" {
		free = 0 // paused or out of its schedule: lease nothing (pause.go)
	}
	a := &protocol.Advert{V: protocol.Version, Peer: n.h.ID().String(), TokensPerSec: n.tokensPerSec(),
		FreeSlots: free, Device: n.cfg.Device, UnixMilli: ms}
	for _, b := range n.bases {
		a.Bases = append(a.Bases, b.Info())
	}
	for s := range n.codecs {
		a.Codecs = append(a.Codecs, s)
	}
	return a
}

func (n *Node) tokensPerSec() float64 { return math.Float64frombits(n.tps.Load()) }

// observe folds one job's throughput into the moving average.
func (n *Node) observe(tokens int, d time.Duration) {
	if d <= 0 {
		return
	}
	x := float64(tokens) / d.Seconds()
	old := n.tokensPerSec()
	if old != 0 {
		x = 0.7*old + 0.3*x
	}
	n.tps.Store(math.Float64bits(x))
}

func (n *Node) release() { <-n.slots }

// begin registers an in-flight job unless the node is closing.
func (n *Node) begin() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Add(1)
	return true
}

// handleEmbed serves one embedding job on s: request, streamed results,
// done, acknowledgement.
func (n *Node) handleEmbed(s network.Stream) {
	if !n.begin() {
		s.Reset()
		return
	}
	defer n.wg.Done()
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.JobTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	remote := s.Conn().RemotePeer()
	n.coords.LoadOrStore(remote, struct{}{})
	log := n.log.With("remote", remote.String())
	if err := n.serveJob(ctx, s, log); err != nil {
		n.rejected.Add(1)
		var perr *protocol.Error
		if k := protocol.KindOf(err); k == protocol.KindOverloaded || k == protocol.KindTooLarge {
			// The coordinator leases it again (elsewhere); admit logged
			// the hand-backs a volunteer should see.
			log.Debug("chunk refused", "err", err)
		} else {
			log.Info("chunk not delivered", "err", err)
		}
		if errors.As(err, &perr) && protocol.WriteFrame(s, perr) == nil {
			s.Close() // a reset would discard the error before the peer reads it
			return
		}
		s.Reset()
		return
	}
	s.Close()
}

// serveJob runs one job; a *protocol.Error return is sent to the peer.
func (n *Node) serveJob(ctx context.Context, s network.Stream, log *slog.Logger) error {
	req, err := protocol.ReadExpect[*protocol.EmbedRequest](s)
	if err != nil {
		return protocol.Errorf(protocol.KindInvalid, "read request: %v", err)
	}
	base, codec, err := n.check(req)
	if err != nil {
		return err
	}
	coord := s.Conn().RemotePeer()
	log = log.With("job", req.JobID, "chunk", short(req.ChunkID))
	log.Info("chunk leased", "seqs", len(req.Seqs), "tokens", req.Tokens())
	r := n.keep.get(coord, req)
	if r == nil {
		if err := n.admit(ctx, req, base, log); err != nil { // pause.go: slot, memory, or handed back
			return err
		}
		// The same chunk may have finished while this request waited (a
		// restarted coordinator leasing it back while it computed).
		if r = n.keep.get(coord, req); r == nil {
			var err error
			r, err = n.computeKept(coord, req, base, codec)
			if err != nil {
				n.leave(base, req)
				return err
			}
		}
		n.leave(base, req)
	}
	if n.keep.sent(r) {
		n.resent.Add(1)
		log.Info("answering from a kept result, not computing")
	}
	var sent int64
	for _, res := range r.results {
		if err := protocol.WriteFrame(s, res); err != nil {
			return fmt.Errorf("write result: %w", err)
		}
		sent += int64(len(res.Data))
	}
	done := &protocol.EmbedDone{V: protocol.Version, JobID: req.JobID, ChunkID: req.ChunkID,
		Results: len(r.results), ComputeMillis: r.millis}
	if err := protocol.WriteFrame(s, done); err != nil {
		return fmt.Errorf("write done: %w", err)
	}
	ack, err := protocol.ReadExpect[*protocol.Ack](s)
	if err != nil {
		return fmt.Errorf("read ack: %w", err)
	}
	switch {
	case !ack.OK:
		n.keep.forget(coord, req.JobID, req.ChunkID)
		return fmt.Errorf("coordinator refused the result: %s", ack.Reason)
	case ack.Held:
		log.Debug("result held by the coordinator for verification; kept")
	default:
		n.keep.forget(coord, req.JobID, req.ChunkID)
	}
	n.jobs.Add(1)
	n.tokens.Add(int64(req.Tokens()))
	n.bytesSent.Add(sent)
	secs := max(float64(r.millis)/1000, 1e-3)
	log.Info("chunk finished", "tokens", req.Tokens(), "tokens_per_s", math.Round(float64(req.Tokens())/secs),
		"sent_KiB", sent>>10, "ms", r.millis, "chunks_so_far", n.jobs.Load())
	return nil
}

// computeKept computes req and keeps the result until the coordinator
// says it is durable.
func (n *Node) computeKept(coord peer.ID, req *protocol.EmbedRequest, base Base, codec tensor.Codec) (*kept, error) {
	start := time.Now()
	results, err := n.compute(req, base, codec)
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	r := &kept{coord: coord, job: req.JobID, chunk: req.ChunkID, base: req.BaseHash, codec: req.Codec,
		layers: req.Layers, results: results, millis: elapsed.Milliseconds(), at: time.Now()}
	for _, sq := range req.Seqs {
		r.rows = append(r.rows, len(sq))
	}
	n.computed.Add(1)
	n.observe(req.Tokens(), elapsed)
	n.keep.put(r)
	return r, nil
}

// check validates a request against what this node serves.
func (n *Node) check(req *protocol.EmbedRequest) (Base, tensor.Codec, error) {
	base, ok := n.bases[req.BaseHash]
	if !ok {
		return nil, tensor.Codec{}, protocol.Errorf(protocol.KindModelMismatch, "base %s is not served here", short(req.BaseHash))
	}
	codec, err := tensor.ParseCodec(req.Codec)
	if err != nil {
		return nil, tensor.Codec{}, protocol.Errorf(protocol.KindInvalid, "codec %q: %v", req.Codec, err)
	}
	if _, ok := n.codecs[codec.String()]; !ok {
		return nil, tensor.Codec{}, protocol.Errorf(protocol.KindInvalid, "codec %q is not offered here", req.Codec)
	}
	info := base.Info()
	for _, l := range req.Layers {
		if l < -1 || l > info.Layers {
			return nil, tensor.Codec{}, protocol.Errorf(protocol.KindInvalid, "layer %d outside [-1, %d]", l, info.Layers)
		}
	}
	for i, seq := range req.Seqs {
		for _, id := range seq {
			if id < 0 || int(id) >= info.Vocab {
				return nil, tensor.Codec{}, protocol.Errorf(protocol.KindInvalid, "sequence %d: token %d outside the vocabulary [0, %d)", i, id, info.Vocab)
			}
		}
	}
	return base, codec, nil
}

// compute runs the forward pass (the whole chunk as one batch when the base
// can, else per sequence) and encodes the bridged layers: one EmbedResult
// per (sequence, layer), in order.
func (n *Node) compute(req *protocol.EmbedRequest, base Base, codec tensor.Codec) ([]*protocol.EmbedResult, error) {
	dim := base.Info().Dim
	var batch [][][]float32
	var err error
	if bb, ok := base.(BatchBase); ok && len(req.Seqs) > 1 {
		if batch, err = bb.ForwardBatch(req.Seqs, req.Layers); err != nil {
			return nil, protocol.Errorf(protocol.KindInternal, "forward: %v", err)
		}
	}
	var out []*protocol.EmbedResult
	for i, seq := range req.Seqs {
		var hs [][]float32
		if batch != nil {
			hs, batch[i] = batch[i], nil // let the encoded sequence go
		} else if hs, err = base.Forward(seq, req.Layers); err != nil {
			return nil, protocol.Errorf(protocol.KindInternal, "forward of sequence %d: %v", i, err)
		}
		for j, layer := range req.Layers {
			out = append(out, &protocol.EmbedResult{V: protocol.Version, JobID: req.JobID, ChunkID: req.ChunkID, Seq: i,
				Layer: layer, Codec: req.Codec, Rows: len(seq), Dim: dim, Data: codec.Encode(nil, hs[j], len(seq), dim)})
		}
	}
	return out, nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
