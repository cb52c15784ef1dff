package node

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/protocol"
	"carryon/swarm"
)

// Kept results. A coordinator acknowledges a result only once it is
// durable (Ack without Held). Until then the node keeps the finished
// result in memory: when the stream dies (the coordinator crashed, the
// connection dropped) or the Ack says Held (the result awaits a second
// opinion in the coordinator's memory). On (re)connecting to that
// coordinator, and every OfferInterval while it holds any, the node offers
// them (protocol.ResultOffer on OfferProtocol); the coordinator leases
// them back and the node answers from memory, without computing. So a
// coordinator crash recomputes nothing a node had finished.

// kept is one finished result.
type kept struct {
	coord   peer.ID
	job     string
	chunk   string
	base    string
	codec   string
	layers  []int
	rows    []int // tokens per sequence
	results []*protocol.EmbedResult
	millis  int64
	at      time.Time
	sends   int // times sent (guarded by the keeper's lock)
}

// keptKey names a result by coordinator, job and chunk.
type keptKey struct {
	coord      peer.ID
	job, chunk string
}

// keeper holds the kept results, oldest first, at most max of them.
type keeper struct {
	mu    sync.Mutex
	max   int
	ttl   time.Duration
	byKey map[keptKey]*kept
	order []keptKey
}

func newKeeper(max int, ttl time.Duration) *keeper {
	return &keeper{max: max, ttl: ttl, byKey: map[keptKey]*kept{}}
}

func (k *keeper) put(r *kept) {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := keptKey{r.coord, r.job, r.chunk}
	if _, ok := k.byKey[key]; !ok {
		k.order = append(k.order, key)
	}
	k.byKey[key] = r
	for len(k.order) > k.max {
		delete(k.byKey, k.order[0])
		k.order = k.order[1:]
	}
}

// get returns the kept result for req from coord, if it answers it
// exactly (same base, codec, layers and sequence lengths).
func (k *keeper) get(coord peer.ID, req *protocol.EmbedRequest) *kept {
	k.mu.Lock()
	defer k.mu.Unlock()
	r := k.byKey[keptKey{coord, req.JobID, req.ChunkID}]
	if r == nil || r.base != req.BaseHash || r.codec != req.Codec || !slices.Equal(r.layers, req.Layers) ||
		len(r.rows) != len(req.Seqs) {
		return nil
	}
	for i, s := range req.Seqs {
		if r.rows[i] != len(s) {
			return nil
		}
	}
	return r
}

// sent counts one more sending of r and reports whether it was sent
// before (a resend).
func (k *keeper) sent(r *kept) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	r.sends++
	return r.sends > 1
}

func (k *keeper) forget(coord peer.ID, job string, chunks ...string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range chunks {
		delete(k.byKey, keptKey{coord, job, c})
	}
	k.order = slices.DeleteFunc(k.order, func(key keptKey) bool { return k.byKey[key] == nil })
}

// offers lists, per job, the chunks kept for coord (dropping expired ones).
func (k *keeper) offers(coord peer.ID, now time.Time) map[string][]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string][]string{}
	for _, key := range k.order {
		r := k.byKey[key]
		if now.Sub(r.at) > k.ttl {
			delete(k.byKey, key)
			continue
		}
		if key.coord == coord && len(out[key.job]) < protocol.MaxOfferChunks {
			out[key.job] = append(out[key.job], key.chunk)
		}
	}
	k.order = slices.DeleteFunc(k.order, func(key keptKey) bool { return k.byKey[key] == nil })
	return out
}

// coords lists the coordinators results are kept for.
func (k *keeper) coords() []peer.ID {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []peer.ID
	for _, key := range k.order {
		if !slices.Contains(out, key.coord) {
			out = append(out, key.coord)
		}
	}
	return out
}

func (k *keeper) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.order)
}

// offerLoop offers kept results to each connected coordinator that has
// any: at once when a connection to it comes up, then every
// OfferInterval.
func (n *Node) offerLoop(ctx context.Context) {
	defer close(n.offer.done)
	connected := make(chan peer.ID, 16)
	nb := &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		select {
		case connected <- c.RemotePeer():
		default:
		}
	}}
	n.h.Network().Notify(nb)
	defer n.h.Network().StopNotify(nb)
	t := time.NewTicker(n.cfg.OfferInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-connected:
			if k := n.keep.offers(p, time.Now()); len(k) > 0 {
				n.log.Info("reconnected to a coordinator; offering finished results", "coordinator", p.String(), "jobs", len(k))
				n.offerTo(ctx, p)
			}
		case <-t.C:
			for _, p := range n.keep.coords() {
				if n.h.Network().Connectedness(p) == network.Connected {
					n.offerTo(ctx, p)
				}
			}
		}
	}
}

// offerTo sends coord one ResultOffer per job and forgets what it says it
// holds durably.
func (n *Node) offerTo(ctx context.Context, coord peer.ID) {
	for job, chunks := range n.keep.offers(coord, time.Now()) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		reply, err := offer(ctx, n.h, coord, &protocol.ResultOffer{V: protocol.Version, JobID: job, Chunks: chunks})
		cancel()
		if err != nil {
			n.log.Debug("result offer failed", "coordinator", coord.String(), "err", err)
			continue
		}
		n.keep.forget(coord, job, reply.Stored...)
		n.log.Debug("results offered", "coordinator", coord.String(), "job", job, "offered", len(chunks), "stored", len(reply.Stored))
	}
}

func offer(ctx context.Context, h host.Host, p peer.ID, m *protocol.ResultOffer) (*protocol.OfferReply, error) {
	s, err := h.NewStream(ctx, p, protocol.OfferProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	return swarm.Ask[*protocol.OfferReply](s, m)
}
