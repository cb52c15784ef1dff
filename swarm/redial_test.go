package swarm

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// nextEvent returns the next event of kind from ch, skipping others.
func nextEvent(t *testing.T, ch <-chan RedialEvent, kind RedialKind, within time.Duration) RedialEvent {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case e := <-ch:
			if e.Kind == kind {
				return e
			}
		case <-deadline:
			t.Fatalf("no %v event within %v", kind, within)
		}
	}
}

// TestKeepConnectedRedials: a "coordinator" host is closed and a new one
// with the same identity starts on the same address, reached through a
// /dns4 name; the kept host reports the loss at once and is connected to
// the new one within about a second, without anyone dialling by hand.
func TestKeepConnectedRedials(t *testing.T) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	coord, err := NewHost(HostConfig{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	port, err := coord.Addrs()[0].ValueForProtocol(ma.P_TCP)
	if err != nil {
		t.Fatal(err)
	}
	// Two addresses of the one peer, one of them a DNS name: they merge.
	dns := ma.StringCast(fmt.Sprintf("/dns4/localhost/tcp/%s", port))
	boot := []peer.AddrInfo{{ID: coord.ID(), Addrs: []ma.Multiaddr{dns}}, {ID: coord.ID(), Addrs: coord.Addrs()}}
	if got := mergeAddrInfos(boot); len(got) != 1 || len(got[0].Addrs) != 2 {
		t.Fatalf("merged %v", got)
	}

	node := newHost(t, HostConfig{})
	events := make(chan RedialEvent, 64)
	k, err := KeepConnected(context.Background(), node, boot[:1], RedialConfig{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond,
		OnEvent: func(e RedialEvent) { events <- e }})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if e := nextEvent(t, events, Connected, 10*time.Second); !e.First || e.Peer != coord.ID() {
		t.Fatalf("first event %+v", e)
	}

	coord.Close()
	nextEvent(t, events, Lost, 10*time.Second)
	if e := nextEvent(t, events, DialFailed, 10*time.Second); e.Err == nil || e.Wait <= 0 {
		t.Fatalf("dial to a stopped peer: %+v", e)
	}
	restarted := time.Now()
	coord2, err := NewHost(HostConfig{Key: key, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/" + port}})
	if err != nil {
		t.Fatal(err)
	}
	defer coord2.Close()
	e := nextEvent(t, events, Connected, 10*time.Second)
	if e.First || e.Attempts < 1 || e.Down <= 0 {
		t.Fatalf("reconnect event %+v", e)
	}
	if back := time.Since(restarted); back > 2*time.Second {
		t.Fatalf("reconnected %v after the restart; Max is 200ms", back)
	}
	t.Logf("back after %d dials, %v down, %v after the restart", e.Attempts, e.Down.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))

	// After Close nothing redials.
	k.Close()
	node.Network().ClosePeer(coord2.ID())
	select {
	case e := <-events:
		t.Fatalf("event after Close: %+v", e)
	case <-time.After(300 * time.Millisecond): // a redial would have come after Min (50ms)
	}
	if node.Network().Connectedness(coord2.ID()) == network.Connected {
		t.Fatal("redialled after Close")
	}
}

func TestJitter(t *testing.T) {
	for _, d := range []time.Duration{1, 2, time.Millisecond, 10 * time.Second} {
		for range 100 {
			if j := jitter(d); j < d/2 || j > d {
				t.Fatalf("jitter(%v) = %v", d, j)
			}
		}
	}
}
