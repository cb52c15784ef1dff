package swarm

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	ma "github.com/multiformats/go-multiaddr"
)

func TestReachString(t *testing.T) {
	m := func(s string) ma.Multiaddr { return ma.StringCast(s) }
	pub, relayed := m("/ip4/203.0.113.7/tcp/4001"), m("/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit")
	for _, c := range []struct {
		r    Reach
		want string
	}{
		{Reach{Public: []ma.Multiaddr{pub}}, "reachable at public addresses /ip4/203.0.113.7/tcp/4001"},
		{Reach{Public: []ma.Multiaddr{pub}, AutoNAT: network.ReachabilityPublic}, "(confirmed by AutoNAT)"},
		{Reach{Public: []ma.Multiaddr{pub}, AutoNAT: network.ReachabilityPrivate}, NotReachable},
		{Reach{Relayed: []ma.Multiaddr{relayed}, AutoNAT: network.ReachabilityPrivate}, "reachable only through relays"},
		{Reach{Local: []ma.Multiaddr{m("/ip4/192.168.1.5/tcp/1")}}, NotReachable + " (local addresses /ip4/192.168.1.5/tcp/1)"},
	} {
		if got := c.r.String(); !strings.Contains(got, c.want) {
			t.Errorf("%+v: %q, want it to contain %q", c.r, got, c.want)
		}
		if want := !strings.HasPrefix(c.want, NotReachable); c.r.Reachable() != want {
			t.Errorf("%+v: Reachable() = %v", c.r, !want)
		}
	}
	h := newHost(t, HostConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Reach, 4)
	if err := WatchReach(ctx, h, func(r Reach) { got <- r }); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.Reachable() || len(r.Local) == 0 || !strings.HasPrefix(r.String(), NotReachable) {
		t.Errorf("loopback host: %v", r)
	}
}

func TestNATConfigValidate(t *testing.T) {
	relay := peer.AddrInfo{ID: "x"}
	for name, n := range map[string]*NATConfig{
		"relays without client": {Relays: []peer.AddrInfo{relay}},
		"relay without address": {RelayClient: true, Relays: []peer.AddrInfo{relay}},
	} {
		if err := (&HostConfig{NAT: n}).Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestRelayCarriesOnlySignalling: a volunteer behind a NAT reserves a slot
// on a relay (the coordinator, RelayService); another peer reaches it at
// its /p2p-circuit address. The relayed connection is marked limited and
// carries a small message, but the relay cuts it before a bulk transfer
// gets through: with libp2p's default limit, 128 KiB.
func TestRelayCarriesOnlySignalling(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	relay, behind, other := newRelayed(t, ctx)

	const proto = "/carryon-test/bulk/1.0.0"
	received := make(chan int64, 4)
	behind.SetStreamHandler(proto, func(s network.Stream) {
		n, _ := io.Copy(io.Discard, s)
		received <- n
		s.Close()
	})
	connectThroughRelay(t, ctx, other, behind, relay)
	conns := other.Network().ConnsToPeer(behind.ID())
	if len(conns) != 1 || !conns[0].Stat().Limited {
		t.Fatalf("want one limited (relayed) connection, got %d", len(conns))
	}
	send := func(n int) error {
		s, err := other.NewStream(network.WithAllowLimitedConn(ctx, "signalling"), behind.ID(), proto)
		if err != nil {
			return err
		}
		if _, err := s.Write(make([]byte, n)); err != nil {
			s.Reset()
			return err
		}
		return s.CloseWrite()
	}
	if err := send(1 << 10); err != nil {
		t.Fatalf("1 KiB through the relay: %v", err)
	}
	if n := <-received; n != 1<<10 {
		t.Fatalf("received %d bytes of 1 KiB", n)
	}
	// The relay cuts the connection part way: the sender's write fails, and
	// the receiver, if it learns of the end at all, has at most 128 KiB.
	if err := send(1 << 20); err == nil {
		t.Fatal("1 MiB went through the relay")
	} else {
		t.Logf("1 MiB through the relay: %v", err)
	}
	waitConns(t, other, func() bool { return len(other.Network().ConnsToPeer(behind.ID())) == 0 })
	select {
	case n := <-received:
		if n > 128<<10 {
			t.Fatalf("the relay carried %d bytes on one connection, want at most 128 KiB", n)
		}
	default:
	}
}

// newRelayed starts a relay (RelayService, public) and two relay clients:
// behind, connected to the relay and holding a reservation on it, and
// other, not connected to either.
func newRelayed(t *testing.T, ctx context.Context) (relay, behind, other host.Host) {
	t.Helper()
	relay = newHost(t, HostConfig{NAT: &NATConfig{RelayService: true, Reachability: network.ReachabilityPublic}})
	behind = newHost(t, HostConfig{NAT: &NATConfig{RelayClient: true}})
	other = newHost(t, HostConfig{NAT: &NATConfig{RelayClient: true}})
	mustConnect(t, behind, relay)
	waitRelayService(t, relay)
	if _, err := client.Reserve(ctx, behind, peer.AddrInfo{ID: relay.ID(), Addrs: relay.Addrs()}); err != nil {
		t.Fatalf("reserve a relay slot: %v", err)
	}
	return relay, behind, other
}

// connectThroughRelay connects from to to at to's /p2p-circuit address on
// relay.
func connectThroughRelay(t *testing.T, ctx context.Context, from, to, relay host.Host) {
	t.Helper()
	circuit := ma.StringCast(relay.Addrs()[0].String() + "/p2p/" + relay.ID().String() + "/p2p-circuit")
	if err := from.Connect(ctx, peer.AddrInfo{ID: to.ID(), Addrs: []ma.Multiaddr{circuit}}); err != nil {
		t.Fatalf("connect through the relay: %v", err)
	}
}

// waitRelayService waits until h serves circuit relay v2's hop protocol:
// the relay service starts once h sees itself as publicly reachable, and
// the host announces the new protocol on its event bus (no polling).
func waitRelayService(t *testing.T, h host.Host) {
	t.Helper()
	sub, err := h.EventBus().Subscribe(new(event.EvtLocalProtocolsUpdated))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	for !slices.Contains(h.Mux().Protocols(), proto.ProtoIDv2Hop) {
		select {
		case <-sub.Out():
		case <-timer.C:
			t.Fatal("the relay service never started")
		}
	}
}

// TestWatchPaths: a peer reached through a relay is "relayed", then
// "direct" once the two dial each other, then "not connected"; PathTo
// agrees at each step. (Hole-punched paths need two NATs:
// TestHolePunchNamespaces.)
func TestWatchPaths(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	relay, behind, other := newRelayed(t, ctx)
	got := make(chan Path, 16)
	WatchPaths(ctx, other, func(p peer.ID, path Path) {
		if p == behind.ID() {
			got <- path
		}
	})
	expect := func(want Path) {
		t.Helper()
		select {
		case path := <-got:
			if path != want {
				t.Fatalf("WatchPaths reported %s, want %s", path, want)
			}
			if now := PathTo(other, behind.ID()); now != want {
				t.Fatalf("PathTo says %s, want %s", now, want)
			}
		case <-ctx.Done():
			t.Fatalf("WatchPaths never reported %s", want)
		}
	}
	connectThroughRelay(t, ctx, other, behind, relay)
	expect(PathRelayed)
	if _, err := other.Network().DialPeer(network.WithForceDirectDial(ctx, "test"), behind.ID()); err != nil {
		t.Fatal(err)
	}
	expect(PathDirect)
	other.Network().ClosePeer(behind.ID())
	expect(PathNone)
	if s := PathHolePunched.String(); s != "hole-punched" {
		t.Fatalf("PathHolePunched prints %q", s)
	}
}
