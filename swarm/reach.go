package swarm

import (
	"context"
	"fmt"
	"strings"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Reach is how a host can be reached, from its current addresses and what
// AutoNAT (when enabled) has learnt.
type Reach struct {
	// Public are addresses on the public Internet (IP addresses outside
	// private, loopback and link-local ranges).
	Public []ma.Multiaddr
	// Relayed are /p2p-circuit addresses through a relay.
	Relayed []ma.Multiaddr
	// Local are loopback and private-network addresses, reachable only from
	// the same machine or network.
	Local []ma.Multiaddr
	// AutoNAT is AutoNAT's verdict; ReachabilityUnknown when AutoNAT is off
	// or has not decided.
	AutoNAT network.Reachability
}

// NotReachable is how Reach.String describes a host nobody outside can
// dial.
const NotReachable = "not reachable from outside: dials out to the coordinator, which opens streams back over that connection"

// ReachOf classifies h's current addresses.
func ReachOf(h host.Host) Reach {
	r := Reach{AutoNAT: network.ReachabilityUnknown}
	for _, a := range h.Addrs() {
		switch {
		case isRelayed(a):
			r.Relayed = append(r.Relayed, a)
		case manet.IsPublicAddr(a):
			r.Public = append(r.Public, a)
		default:
			r.Local = append(r.Local, a)
		}
	}
	return r
}

func isRelayed(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// Reachable reports whether peers outside the host's network can dial it:
// it has a public address AutoNAT has not found unreachable, or a relayed
// address.
func (r Reach) Reachable() bool {
	return len(r.Relayed) > 0 || (len(r.Public) > 0 && r.AutoNAT != network.ReachabilityPrivate)
}

// String describes r in one line: the public addresses, else the relayed
// ones, else NotReachable (with the local addresses).
func (r Reach) String() string {
	var b strings.Builder
	switch {
	case len(r.Public) > 0 && r.AutoNAT != network.ReachabilityPrivate:
		fmt.Fprintf(&b, "reachable at public addresses %s", join(r.Public))
		if r.AutoNAT == network.ReachabilityPublic {
			b.WriteString(" (confirmed by AutoNAT)")
		}
		if len(r.Relayed) > 0 {
			fmt.Fprintf(&b, " and through relays at %s", join(r.Relayed))
		}
	case len(r.Relayed) > 0:
		fmt.Fprintf(&b, "reachable only through relays at %s", join(r.Relayed))
	default:
		b.WriteString(NotReachable)
		if len(r.Local) > 0 {
			fmt.Fprintf(&b, " (local addresses %s)", join(r.Local))
		}
	}
	return b.String()
}

// CoordinatorNotReachable is how Reach.Coordinator describes a coordinator
// nobody outside its network can dial.
const CoordinatorNotReachable = "not reachable from outside this network: only nodes that can dial its local addresses can join (give it a public address, forward its port, or run it where volunteers can reach it)"

// Coordinator describes r for a coordinator, whom nodes must dial: as
// String, except that a host nobody outside can dial gets
// CoordinatorNotReachable rather than the volunteer's sentence.
func (r Reach) Coordinator() string {
	if r.Reachable() {
		return r.String()
	}
	s := CoordinatorNotReachable
	if len(r.Local) > 0 {
		s += " (local addresses " + join(r.Local) + ")"
	}
	return s
}

func join(as []ma.Multiaddr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// WatchReach calls fn with h's Reach now and again whenever its addresses
// or its AutoNAT reachability change, until ctx ends. fn runs on one
// goroutine, never concurrently with itself.
func WatchReach(ctx context.Context, h host.Host, fn func(Reach)) error {
	sub, err := h.EventBus().Subscribe([]any{new(event.EvtLocalAddressesUpdated), new(event.EvtLocalReachabilityChanged)})
	if err != nil {
		return fmt.Errorf("swarm.WatchReach: %w", err)
	}
	auto, last := network.ReachabilityUnknown, ""
	emit := func() {
		r := ReachOf(h)
		r.AutoNAT = auto
		if s := r.String(); s != last {
			last = s
			fn(r)
		}
	}
	go func() {
		defer sub.Close()
		emit()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-sub.Out():
				if !ok {
					return
				}
				if rc, ok := e.(event.EvtLocalReachabilityChanged); ok {
					auto = rc.Reachability
				}
				emit()
			}
		}
	}()
	return nil
}
