package swarm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/internal/atomicfile"
	"carryon/protocol"
)

// RosterGate is a connection gater that enforces a closed swarm's roster:
// until it holds a roster it admits every peer (the swarm key still
// applies); from the first verified roster of a trusted signer on, it
// admits only that roster's members and the trusted signers, on dial and
// right after the handshake on accept, and Apply closes the connections
// to every peer a new roster leaves out. Safe for concurrent use.
type RosterGate struct {
	peerGate // admits the peers Admits admits
	mu       sync.RWMutex
	signers  map[peer.ID]bool
	cur      *protocol.Roster
	h        host.Host
}

// NewRosterGate returns a gate that trusts rosters signed by signers (the
// coordinator's peer ID). With no signers it never closes.
func NewRosterGate(signers ...peer.ID) *RosterGate {
	g := &RosterGate{signers: map[peer.ID]bool{}}
	g.peerGate = peerGate{g.Admits}
	for _, s := range signers {
		g.signers[s] = true
	}
	return g
}

// Attach names the host whose connections Apply closes.
func (g *RosterGate) Attach(h host.Host) {
	g.mu.Lock()
	g.h = h
	g.mu.Unlock()
}

// Signers lists the trusted signers.
func (g *RosterGate) Signers() []peer.ID {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []peer.ID
	for s := range g.signers {
		out = append(out, s)
	}
	return out
}

// Current returns the roster in force, nil when none.
func (g *RosterGate) Current() *protocol.Roster {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.cur
}

// ErrStaleRoster is wrapped by Apply's error for a roster whose Seq is not
// above the one in force (a repeat or an older roster: no harm done).
var ErrStaleRoster = errors.New("roster not newer than the one in force")

// Apply verifies r (its signature, a trusted signer, a Seq above the
// roster in force), makes it the roster in force and closes the attached
// host's connections to every peer it no longer admits, which it returns.
func (g *RosterGate) Apply(r *protocol.Roster) (cut []peer.ID, err error) {
	signer, err := r.Verify()
	if err != nil {
		return nil, fmt.Errorf("swarm.RosterGate.Apply: %w", err)
	}
	g.mu.Lock()
	if !g.signers[signer] {
		g.mu.Unlock()
		return nil, fmt.Errorf("swarm.RosterGate.Apply: roster signed by %s, not a trusted roster signer", signer)
	}
	if g.cur != nil && r.Seq <= g.cur.Seq {
		seq := g.cur.Seq
		g.mu.Unlock()
		return nil, fmt.Errorf("swarm.RosterGate.Apply: seq %d, in force %d: %w", r.Seq, seq, ErrStaleRoster)
	}
	g.cur = r
	h := g.h
	g.mu.Unlock()
	if h == nil {
		return nil, nil
	}
	for _, p := range h.Network().Peers() {
		if !g.Admits(p) {
			h.Network().ClosePeer(p)
			cut = append(cut, p)
		}
	}
	return cut, nil
}

// Admits reports whether a connection with p is allowed now.
func (g *RosterGate) Admits(p peer.ID) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.cur == nil || g.signers[p] || g.cur.Has(p)
}

// RosterChange reports a roster put in force by FollowRoster.
type RosterChange struct {
	Roster *protocol.Roster
	From   peer.ID   // the peer it came from (gossip author or stream peer)
	Cut    []peer.ID // peers whose connections were closed
}

// FollowRoster keeps g up to date on h until ctx ends: it applies every
// roster on topics.Control, fetches the current one over
// protocol.RosterProtocol from each trusted signer as soon as it connects
// (gossip is not replayed to late joiners), and serves the roster in force
// to peers that ask. onChange, when set, is called for each roster put in
// force (from one goroutine at a time).
func FollowRoster(ctx context.Context, h host.Host, topics *Topics, g *RosterGate, onChange func(RosterChange)) error {
	g.Attach(h)
	sub, err := topics.Control.Subscribe()
	if err != nil {
		return fmt.Errorf("swarm.FollowRoster: %w", err)
	}
	var mu sync.Mutex
	apply := func(r *protocol.Roster, from peer.ID) {
		mu.Lock()
		defer mu.Unlock()
		cut, err := g.Apply(r)
		if err == nil && onChange != nil {
			onChange(RosterChange{Roster: r, From: from, Cut: cut})
		}
	}
	serveRoster(h, g)
	fetch := func(p peer.ID) {
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := h.NewStream(fctx, p, protocol.RosterProtocol)
		if err != nil {
			return
		}
		defer s.Close()
		s.SetDeadline(time.Now().Add(10 * time.Second))
		if r, err := protocol.ReadExpect[*protocol.Roster](s); err == nil {
			apply(r, p)
		}
	}
	trusted := map[peer.ID]bool{}
	for _, s := range g.Signers() {
		trusted[s] = true
	}
	nb := &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if trusted[c.RemotePeer()] && c.RemotePeer() != h.ID() {
			go fetch(c.RemotePeer())
		}
	}}
	h.Network().Notify(nb)
	for p := range trusted {
		if p != h.ID() && h.Network().Connectedness(p) == network.Connected {
			go fetch(p)
		}
	}
	go func() {
		defer h.Network().StopNotify(nb)
		defer sub.Cancel()
		for {
			r, from, err := NextGossip[*protocol.Roster](ctx, sub)
			if err != nil {
				return
			}
			apply(r, from)
		}
	}()
	return nil
}

// serveRoster answers protocol.RosterProtocol with the roster in force.
func serveRoster(h host.Host, g *RosterGate) {
	h.SetStreamHandler(protocol.RosterProtocol, func(s network.Stream) {
		defer s.Close()
		s.SetDeadline(time.Now().Add(10 * time.Second))
		if r := g.Current(); r != nil {
			protocol.WriteFrame(s, r)
			return
		}
		protocol.WriteFrame(s, protocol.Errorf(protocol.KindNotFound, "no roster in force"))
	})
}

// LoadRosterFile reads a signed roster written by SaveRosterFile; a
// missing file is (nil, nil).
func LoadRosterFile(path string) (*protocol.Roster, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("roster %s: %w", path, err)
	}
	m, err := protocol.ReadFrame(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("roster %s: %w", path, err)
	}
	r, ok := m.(*protocol.Roster)
	if !ok {
		return nil, fmt.Errorf("roster %s: holds a %v, not a Roster", path, m.Type())
	}
	if _, err := r.Verify(); err != nil {
		return nil, fmt.Errorf("roster %s: %w", path, err)
	}
	return r, nil
}

// SaveRosterFile writes r (its frame) to path atomically, mode 0600.
func SaveRosterFile(path string, r *protocol.Roster) error {
	b, err := protocol.Marshal(r)
	if err != nil {
		return fmt.Errorf("roster %s: %w", path, err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("roster %s: %w", path, err)
	}
	return nil
}

// ServeRosterFile is the signer's side: it serves protocol.RosterProtocol
// and applies the roster at path to g now and whenever the file changes (checked every poll; `carryon roster`
// rewrites it), and publishes each one put in force on topics.Control.
// onChange is as for FollowRoster; errors reading the file go to onError.
func ServeRosterFile(ctx context.Context, h host.Host, topics *Topics, g *RosterGate, path string, poll time.Duration,
	onChange func(RosterChange), onError func(error)) {
	g.Attach(h)
	serveRoster(h, g)
	var lastMod time.Time
	var lastSize int64 = -1
	check := func() {
		st, err := os.Stat(path)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) && onError != nil {
				onError(err)
			}
			return
		}
		if st.ModTime().Equal(lastMod) && st.Size() == lastSize {
			return
		}
		lastMod, lastSize = st.ModTime(), st.Size()
		r, err := LoadRosterFile(path)
		if err != nil || r == nil {
			if err != nil && onError != nil {
				onError(err)
			}
			return
		}
		cut, err := g.Apply(r)
		if err != nil {
			if !errors.Is(err, ErrStaleRoster) && onError != nil {
				onError(err)
			}
			return
		}
		if err := Publish(ctx, topics.Control, r); err != nil && onError != nil {
			onError(err)
		}
		if onChange != nil {
			onChange(RosterChange{Roster: r, From: h.ID(), Cut: cut})
		}
	}
	check()
	go every(ctx, poll, check)
}
