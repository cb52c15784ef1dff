package swarm

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// NATConfig switches on libp2p's NAT services for hosts on the Internet.
//
// None of them is needed for the embedding work itself: a volunteer behind
// a NAT dials out to the coordinator, and the coordinator opens its streams
// back over that connection. They serve volunteer-to-volunteer transfers
// (adaptor blobs) and let a host learn and report how it can be reached.
type NATConfig struct {
	// PortMap asks the router for a port mapping (UPnP / NAT-PMP).
	PortMap bool
	// HolePunching enables DCUtR hole punching: two peers that meet over a
	// relayed connection try to open a direct one. Needs RelayClient.
	HolePunching bool
	// RelayClient lets the host dial through circuit relay v2 and, once
	// AutoNAT finds it unreachable, reserve a slot on one of Relays so that
	// peers can reach it at a /p2p-circuit address.
	RelayClient bool
	// Relays are the relays RelayClient reserves slots on (typically the
	// coordinator, started with RelayService). Empty: the host can dial
	// through relays but does not advertise relayed addresses.
	Relays []peer.AddrInfo
	// AutoNATv2 learns the reachability of each of the host's addresses by
	// asking peers to dial them back, and serves such requests for others.
	AutoNATv2 bool
	// RelayService makes the host a circuit relay v2 for others (a publicly
	// reachable coordinator) and serves AutoNAT (v1 and v2) dial-backs so
	// the volunteers that connect to it learn whether they are reachable.
	// Relayed connections keep libp2p's default limits (relayv2.DefaultLimit): they
	// carry signalling such as hole punching, not bulk data.
	RelayService bool
	// Reachability, when Public or Private, fixes the host's reachability
	// instead of asking AutoNAT: a coordinator known to be public starts
	// its relay service at once (libp2p runs it only on public hosts), and
	// a host known to be behind a NAT reserves relay slots at once.
	Reachability network.Reachability
}

func (n *NATConfig) validate() error {
	if n == nil {
		return nil
	}
	if n.HolePunching && !n.RelayClient {
		return errors.New("swarm.HostConfig: NAT.HolePunching needs NAT.RelayClient")
	}
	if len(n.Relays) > 0 && !n.RelayClient {
		return errors.New("swarm.HostConfig: NAT.Relays needs NAT.RelayClient")
	}
	for i, r := range n.Relays {
		if err := r.ID.Validate(); err != nil || len(r.Addrs) == 0 {
			return fmt.Errorf("swarm.HostConfig: NAT.Relays[%d] needs a peer ID and an address", i)
		}
	}
	return nil
}

// natOptions turns n into libp2p options. A nil n (the loopback default)
// switches the relay transport off and starts no NAT service.
func natOptions(n *NATConfig) []libp2p.Option {
	if n == nil {
		return []libp2p.Option{libp2p.DisableRelay()}
	}
	var opts []libp2p.Option
	if n.PortMap {
		opts = append(opts, libp2p.NATPortMap())
	}
	if n.RelayClient || n.RelayService {
		// The relay service needs the circuit transport too (it speaks the
		// hop protocol; the transport handles the stop side).
		opts = append(opts, libp2p.EnableRelay())
	} else {
		opts = append(opts, libp2p.DisableRelay())
	}
	if n.RelayClient && len(n.Relays) > 0 {
		opts = append(opts, libp2p.EnableAutoRelayWithStaticRelays(n.Relays))
	}
	if n.HolePunching {
		opts = append(opts, holePunchOption())
	}
	if n.AutoNATv2 || n.RelayService {
		opts = append(opts, libp2p.EnableAutoNATv2())
	}
	if n.RelayService {
		// No relayv2.WithResources: relayv2.DefaultResources, whose Limit
		// caps each relayed connection at 128 KiB or 2 minutes.
		opts = append(opts, libp2p.EnableRelayService(), libp2p.EnableNATService())
	}
	switch n.Reachability {
	case network.ReachabilityPublic:
		opts = append(opts, libp2p.ForceReachabilityPublic())
	case network.ReachabilityPrivate:
		opts = append(opts, libp2p.ForceReachabilityPrivate())
	}
	return opts
}
