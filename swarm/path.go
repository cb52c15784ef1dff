package swarm

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
)

// Path is how a host reaches one peer now: the best of its connections to
// that peer.
type Path int

const (
	// PathNone: no open connection.
	PathNone Path = iota
	// PathRelayed: only connections through a circuit relay v2, which caps
	// what they carry (signalling, not bulk data).
	PathRelayed
	// PathDirect: a direct connection that one side dialled.
	PathDirect
	// PathHolePunched: a direct connection opened by DCUtR hole punching
	// between two peers behind NATs, after they met over a relay.
	PathHolePunched
)

func (p Path) String() string {
	switch p {
	case PathNone:
		return "not connected"
	case PathRelayed:
		return "relayed"
	case PathDirect:
		return "direct"
	case PathHolePunched:
		return "hole-punched"
	}
	return fmt.Sprintf("Path(%d)", int(p))
}

// punchLog remembers, for every host of this process with hole punching
// on, when each remote peer's last successful hole punch started, so that
// PathTo can tell a punched connection from one either side dialled. It is
// fed by libp2p's holepunch tracer (holePunchOption) and read by PathTo;
// watchers registered by WatchPaths are told of each success.
var punchLog = struct {
	sync.Mutex
	started  map[[2]peer.ID]time.Time // (local, remote) → start of the punch in progress
	punched  map[[2]peer.ID]time.Time // (local, remote) → start of the last successful punch
	watchers map[peer.ID][]chan struct{}
}{
	started:  map[[2]peer.ID]time.Time{},
	punched:  map[[2]peer.ID]time.Time{},
	watchers: map[peer.ID][]chan struct{}{},
}

type punchTracer struct{}

// Trace records hole punch starts and successes (holepunch.EventTracer).
func (punchTracer) Trace(e *holepunch.Event) {
	key := [2]peer.ID{e.Peer, e.Remote}
	at := time.Unix(0, e.Timestamp)
	punchLog.Lock()
	defer punchLog.Unlock()
	switch ev := e.Evt.(type) {
	case *holepunch.StartHolePunchEvt:
		punchLog.started[key] = at
	case *holepunch.EndHolePunchEvt:
		start, ok := punchLog.started[key]
		delete(punchLog.started, key)
		if !ev.Success {
			return
		}
		if !ok {
			start = at.Add(-ev.EllapsedTime)
		}
		// A punch's connection may be set up a moment before the tracer
		// stamps the start: allow for the round trip it measured.
		punchLog.punched[key] = start.Add(-time.Second)
		for _, w := range punchLog.watchers[e.Peer] {
			select {
			case w <- struct{}{}:
			default: // one wake-up pending already: the watcher rechecks every peer
			}
		}
	}
}

// holePunchOption is libp2p's DCUtR service with the tracer PathTo reads.
func holePunchOption() libp2p.Option {
	return libp2p.EnableHolePunching(holepunch.WithTracer(punchTracer{}))
}

// PathTo reports how h reaches p now: hole-punched when a direct
// connection was opened by a successful hole punch (it was opened no earlier
// than the punch began), direct for another direct connection, relayed when
// only circuit-relay connections are open.
func PathTo(h host.Host, p peer.ID) Path {
	key := [2]peer.ID{h.ID(), p}
	punchLog.Lock()
	since, punched := punchLog.punched[key]
	if start, ok := punchLog.started[key]; ok {
		// A punch in progress: its connection can show up a moment before
		// the tracer reports the end.
		since, punched = start.Add(-time.Second), true
	}
	punchLog.Unlock()
	best := PathNone
	for _, c := range h.Network().ConnsToPeer(p) {
		if c.IsClosed() {
			continue
		}
		path := PathDirect
		switch {
		case c.Stat().Limited || isRelayed(c.RemoteMultiaddr()):
			path = PathRelayed
		case punched && !c.Stat().Opened.Before(since):
			path = PathHolePunched
		}
		best = max(best, path)
	}
	return best
}

// WatchPaths calls fn(p, path) whenever PathTo(h, p) changes for any peer
// p: on connections opened and closed and on each successful hole punch,
// until ctx ends. fn runs on one goroutine, never concurrently with itself;
// libp2p's notifications never wait for it.
func WatchPaths(ctx context.Context, h host.Host, fn func(peer.ID, Path)) {
	var mu sync.Mutex
	pending := map[peer.ID]struct{}{}
	wake := make(chan struct{}, 1)
	signal := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	poke := func(_ network.Network, c network.Conn) {
		mu.Lock()
		pending[c.RemotePeer()] = struct{}{}
		mu.Unlock()
		signal()
	}
	nb := &network.NotifyBundle{ConnectedF: poke, DisconnectedF: poke}
	punched := make(chan struct{}, 1)
	punchLog.Lock()
	punchLog.watchers[h.ID()] = append(punchLog.watchers[h.ID()], punched)
	punchLog.Unlock()
	h.Network().Notify(nb)
	go func() {
		defer func() {
			h.Network().StopNotify(nb)
			punchLog.Lock()
			ws := punchLog.watchers[h.ID()]
			for i, w := range ws {
				if w == punched {
					punchLog.watchers[h.ID()] = append(ws[:i:i], ws[i+1:]...)
					break
				}
			}
			if len(punchLog.watchers[h.ID()]) == 0 {
				delete(punchLog.watchers, h.ID())
			}
			punchLog.Unlock()
		}()
		last := map[peer.ID]Path{}
		update := func(p peer.ID) {
			path := PathTo(h, p)
			if path == last[p] {
				return
			}
			if path == PathNone {
				delete(last, p)
			} else {
				last[p] = path
			}
			fn(p, path)
		}
		for _, p := range h.Network().Peers() {
			update(p)
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-wake:
				mu.Lock()
				ps := pending
				pending = map[peer.ID]struct{}{}
				mu.Unlock()
				for p := range ps {
					update(p)
				}
			case <-punched:
				for _, p := range h.Network().Peers() {
					update(p)
				}
			}
		}
	}()
}
