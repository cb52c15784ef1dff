package swarm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ipfs/boxo/bitswap"
	bsmsg "github.com/ipfs/boxo/bitswap/message"
	bspb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnetwork "github.com/ipfs/boxo/bitswap/network"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
)

// ExchangeConfig configures NewExchange.
type ExchangeConfig struct {
	// Routing finds providers that are not connected (the swarm's DHT:
	// Discovery.DHT()); nil asks only connected peers.
	Routing routing.ContentDiscovery
	// Penalty is how long a peer that sent a block nobody asked it for
	// (bytes that do not hash to a wanted CID) or a DAG over the limits is
	// ignored: it is disconnected, and if it dials back its bitswap
	// messages are dropped and nothing is sent to it; 0 means 10 minutes.
	Penalty time.Duration
	// OnPenalty, when set, is called for every penalty with the peer and
	// the reason.
	OnPenalty func(peer.ID, error)
}

// DefaultPenalty is ExchangeConfig.Penalty's zero-value meaning.
const DefaultPenalty = 10 * time.Minute

// Validate checks the configuration.
func (c *ExchangeConfig) Validate() error {
	if c.Penalty < 0 {
		return fmt.Errorf("swarm.ExchangeConfig.Penalty: %v is negative", c.Penalty)
	}
	return nil
}

// Exchange serves a Blocks store over bitswap (the IPFS block exchange
// protocol, /ipfs/bitswap/1.2.0, which Kubo speaks) on the host, and
// fetches files from the peers that have them: the peers the host is
// connected to first, then the providers Routing finds. Bitswap names a
// received block by hashing its bytes, so a block whose bytes do not hash
// to the wanted CID is never taken for it; Exchange also penalises the peer
// that sent it (see ExchangeConfig.Penalty).
type Exchange struct {
	h       host.Host
	blocks  *Blocks
	bs      *bitswap.Bitswap
	net     *guardedNet
	routing routing.ContentDiscovery
	cancel  context.CancelFunc
}

// NewExchange starts bitswap on h over b's blockstore. Close stops it
// (before h is closed).
func NewExchange(h host.Host, b *Blocks, cfg ExchangeConfig) (*Exchange, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Penalty == 0 {
		cfg.Penalty = DefaultPenalty
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &guardedNet{BitSwapNetwork: bsnet.NewFromIpfsHost(h), h: h, cfg: cfg,
		wants: make(map[peer.ID]map[string]time.Time), penalised: make(map[peer.ID]time.Time),
		from: make(map[string]peer.ID), dontHave: make(map[string]map[peer.ID]bool)}
	x := &Exchange{h: h, blocks: b, net: g, routing: cfg.Routing, cancel: cancel}
	var finder routing.ContentDiscovery
	if cfg.Routing != nil {
		finder = cfg.Routing
	}
	x.bs = bitswap.New(ctx, g, finder, b.Blockstore(),
		bitswap.ProviderSearchDelay(200*time.Millisecond), // connected peers answer within this on loopback and LANs
		bitswap.WithoutDuplicatedBlockStats())
	b.OnCommit(func(ctx context.Context, roots []cid.Cid) {
		var blks []blocks.Block
		for _, r := range roots {
			if blk, err := b.Blockstore().Get(ctx, r); err == nil {
				blks = append(blks, blk)
			}
		}
		x.bs.NotifyNewBlocks(ctx, blks...)
	})
	return x, nil
}

// Close stops bitswap.
func (x *Exchange) Close() error {
	x.cancel()
	if err := x.bs.Close(); err != nil {
		return fmt.Errorf("swarm.Exchange.Close: %w", err)
	}
	return nil
}

// Blocks is the store the exchange serves and fetches into.
func (x *Exchange) Blocks() *Blocks { return x.blocks }

// Penalised reports whether p is serving a penalty now.
func (x *Exchange) Penalised(p peer.ID) bool { return x.net.isPenalised(p) }

// Penalise disconnects p and ignores it for the penalty time.
func (x *Exchange) Penalise(p peer.ID, why error) { x.net.penalise(p, why) }

// guardedNet is bitswap's network with a record of what was asked of
// whom: a block that a peer sends without having been asked for its CID is
// a lie (or spam), and the peer is penalised and ignored.
type guardedNet struct {
	bsnetwork.BitSwapNetwork
	h   host.Host
	cfg ExchangeConfig

	mu        sync.Mutex
	wants     map[peer.ID]map[string]time.Time // multihash → when last asked
	penalised map[peer.ID]time.Time            // until
	from      map[string]peer.ID               // multihash → the peer that delivered it (recent)
	dontHave  map[string]map[peer.ID]bool      // multihash → peers that said DONT_HAVE (recent)
	// onBlock, when set (tests), is called for every accepted block.
	onBlock func(peer.ID, blocks.Block)
}

// wantMemory is how long a want stays on record: a block that comes later
// counts as unsolicited.
const wantMemory = 10 * time.Minute

func (g *guardedNet) record(p peer.ID, m bsmsg.BitSwapMessage) {
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	w := g.wants[p]
	for _, e := range m.Wantlist() {
		if e.Cancel {
			continue
		}
		if w == nil {
			w = make(map[string]time.Time)
			g.wants[p] = w
		}
		w[string(e.Cid.Hash())] = now
	}
	if len(w) > 1<<16 { // forget old wants
		for k, t := range w {
			if now.Sub(t) > wantMemory {
				delete(w, k)
			}
		}
	}
}

func (g *guardedNet) isPenalised(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	until, ok := g.penalised[p]
	if ok && time.Now().After(until) {
		delete(g.penalised, p)
		return false
	}
	return ok
}

func (g *guardedNet) penalise(p peer.ID, why error) {
	g.mu.Lock()
	g.penalised[p] = time.Now().Add(g.cfg.Penalty)
	delete(g.wants, p)
	g.mu.Unlock()
	g.h.Network().ClosePeer(p)
	if g.cfg.OnPenalty != nil {
		g.cfg.OnPenalty(p, why)
	}
}

// sources lists the peers a fetch without routing can get a block from:
// those connected now and not penalised that speak bitswap, or whose
// protocols are not known yet (identify is still running: the probe's
// stream waits for it, and it fails if the peer turns out not to speak
// bitswap). A fetch takes this list before it asks anyone for anything, so
// a peer that answers with wrong bytes and is penalised for them before the
// probe reaches it is still on it.
func (g *guardedNet) sources() []peer.ID {
	var ps []peer.ID
	for _, p := range g.h.Network().Peers() {
		if g.isPenalised(p) {
			continue
		}
		if protos, err := g.h.Peerstore().GetProtocols(p); err == nil && len(protos) > 0 {
			if bs, err := g.h.Peerstore().SupportsProtocols(p, bsnet.ProtocolBitswap); err != nil || len(bs) == 0 {
				continue // identified, and it does not speak bitswap
			}
		}
		ps = append(ps, p)
	}
	return ps
}

// probe asks each of peers whether it has c, wanting a DONT_HAVE answer
// (bitswap's own broadcast does not ask for one). It returns the peers
// whose answer counts: those asked, and those penalised since they were
// listed, which sent wrong bytes for a want (theirs or the fetch's) before
// the probe reached them; a lie is not a DONT_HAVE, so the fetch does not
// conclude that nobody has c. A peer that could not be asked for another
// reason (it left) is dropped.
func (g *guardedNet) probe(ctx context.Context, c cid.Cid, peers []peer.ID) []peer.ID {
	var asked []peer.ID
	for _, p := range peers {
		m := bsmsg.New(false)
		m.AddEntry(c, 1, bspb.Message_Wantlist_Have, true)
		if g.SendMessage(ctx, p, m) == nil || g.isPenalised(p) {
			asked = append(asked, p)
		}
	}
	return asked
}

// nobodyHas reports whether every peer in asked said DONT_HAVE for c.
func (g *guardedNet) nobodyHas(c cid.Cid, asked []peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	said := g.dontHave[string(c.Hash())]
	for _, p := range asked {
		if !said[p] {
			return false
		}
	}
	return true
}

// saidDontHave reports whether p said DONT_HAVE for c (recently).
func (g *guardedNet) saidDontHave(c cid.Cid, p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dontHave[string(c.Hash())][p]
}

// forgetDontHaves drops the DONT_HAVE answers about c (before a new fetch).
func (g *guardedNet) forgetDontHaves(c cid.Cid) {
	g.mu.Lock()
	delete(g.dontHave, string(c.Hash()))
	g.mu.Unlock()
}

// deliverer is the peer that sent the block with hash h, if recent.
func (g *guardedNet) deliverer(c cid.Cid) (peer.ID, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p, ok := g.from[string(c.Hash())]
	return p, ok
}

// check accepts m from p, or penalises p and says why not.
func (g *guardedNet) check(p peer.ID, m bsmsg.BitSwapMessage) bool {
	if g.isPenalised(p) {
		return false
	}
	if dh := m.DontHaves(); len(dh) > 0 {
		g.mu.Lock()
		if len(g.dontHave) > 1<<16 {
			clear(g.dontHave)
		}
		for _, c := range dh {
			k := string(c.Hash())
			if g.dontHave[k] == nil {
				g.dontHave[k] = make(map[peer.ID]bool)
			}
			g.dontHave[k][p] = true
		}
		g.mu.Unlock()
	}
	blks := m.Blocks()
	if len(blks) == 0 {
		return true
	}
	now := time.Now()
	g.mu.Lock()
	var bad cid.Cid
	w := g.wants[p]
	for _, b := range blks {
		t, ok := w[string(b.Cid().Hash())]
		if !ok || now.Sub(t) > wantMemory {
			bad = b.Cid()
			break
		}
	}
	if !bad.Defined() {
		if len(g.from) > 1<<16 {
			clear(g.from)
		}
		for _, b := range blks {
			g.from[string(b.Cid().Hash())] = p
		}
	}
	on := g.onBlock
	g.mu.Unlock()
	if bad.Defined() {
		g.penalise(p, fmt.Errorf("sent a block hashing to %s, which nobody asked it for (wrong bytes for a wanted CID, or spam): %w", bad, ErrHashMismatch))
		return false
	}
	if on != nil {
		for _, b := range blks {
			on(p, b)
		}
	}
	return true
}

func (g *guardedNet) SendMessage(ctx context.Context, p peer.ID, m bsmsg.BitSwapMessage) error {
	if g.isPenalised(p) {
		return fmt.Errorf("peer %s is penalised", p)
	}
	g.record(p, m)
	return g.BitSwapNetwork.SendMessage(ctx, p, m)
}

func (g *guardedNet) NewMessageSender(ctx context.Context, p peer.ID, opts *bsnetwork.MessageSenderOpts) (bsnetwork.MessageSender, error) {
	if g.isPenalised(p) {
		return nil, fmt.Errorf("peer %s is penalised", p)
	}
	s, err := g.BitSwapNetwork.NewMessageSender(ctx, p, opts)
	if err != nil {
		return nil, err
	}
	return &guardedSender{MessageSender: s, g: g, p: p}, nil
}

func (g *guardedNet) Connect(ctx context.Context, ai peer.AddrInfo) error {
	if g.isPenalised(ai.ID) {
		return fmt.Errorf("peer %s is penalised", ai.ID)
	}
	return g.BitSwapNetwork.Connect(ctx, ai)
}

func (g *guardedNet) Start(rs ...bsnetwork.Receiver) {
	wrapped := make([]bsnetwork.Receiver, len(rs))
	for i, r := range rs {
		wrapped[i] = &guardedReceiver{Receiver: r, g: g}
	}
	g.BitSwapNetwork.Start(wrapped...)
}

type guardedSender struct {
	bsnetwork.MessageSender
	g *guardedNet
	p peer.ID
}

func (s *guardedSender) SendMsg(ctx context.Context, m bsmsg.BitSwapMessage) error {
	if s.g.isPenalised(s.p) {
		return fmt.Errorf("peer %s is penalised", s.p)
	}
	s.g.record(s.p, m)
	return s.MessageSender.SendMsg(ctx, m)
}

type guardedReceiver struct {
	bsnetwork.Receiver
	g *guardedNet
}

func (r *guardedReceiver) ReceiveMessage(ctx context.Context, p peer.ID, m bsmsg.BitSwapMessage) {
	if r.g.check(p, m) {
		r.Receiver.ReceiveMessage(ctx, p, m)
	}
}

func (r *guardedReceiver) PeerConnected(p peer.ID) {
	if !r.g.isPenalised(p) {
		r.Receiver.PeerConnected(p)
	}
}

var errPenalised = errors.New("penalised")
