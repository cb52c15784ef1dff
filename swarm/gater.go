package swarm

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// AllowList is a connection gater that admits only listed peers: dials to
// other peers are refused, and inbound connections from them are closed
// right after the security handshake reveals their ID. It is safe for
// concurrent use; Allow and Revoke take effect on the next connection.
type AllowList struct {
	peerGate // admits Allowed peers
	mu       sync.RWMutex
	peers    map[peer.ID]struct{}
}

// NewAllowList returns an allow-list of ids.
func NewAllowList(ids ...peer.ID) *AllowList {
	a := &AllowList{peers: make(map[peer.ID]struct{}, len(ids))}
	a.peerGate = peerGate{a.Allowed}
	a.Allow(ids...)
	return a
}

// Allow admits ids.
func (a *AllowList) Allow(ids ...peer.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		a.peers[id] = struct{}{}
	}
}

// Revoke removes id and, when h is non-nil, closes h's connections to it.
func (a *AllowList) Revoke(h host.Host, id peer.ID) {
	a.mu.Lock()
	delete(a.peers, id)
	a.mu.Unlock()
	if h != nil {
		h.Network().ClosePeer(id)
	}
}

// Allowed reports whether id is on the list.
func (a *AllowList) Allowed(id peer.ID) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	_, ok := a.peers[id]
	return ok
}

// peerGate is the connection gater of a rule on peer IDs (AllowList's,
// RosterGate's): dials to peers the rule refuses are refused, and inbound
// connections from them are closed right after the security handshake
// reveals their ID.
type peerGate struct{ admit func(peer.ID) bool }

func (g peerGate) InterceptPeerDial(p peer.ID) bool                 { return g.admit(p) }
func (g peerGate) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return g.admit(p) }
func (g peerGate) InterceptAccept(network.ConnMultiaddrs) bool      { return true } // ID not known yet
func (g peerGate) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.admit(p)
}
func (g peerGate) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
