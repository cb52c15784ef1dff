package swarm

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/protocol"
)

// TestRosterEnforced: a coordinator signs a roster of two members in its
// roster file; an outsider connected before the roster is cut by the
// coordinator and refused afterwards, a member that connects after the
// roster was published still gets it (fetched on connect), and revoking a
// member cuts its connections to the coordinator and to the other member,
// which then refuse it too.
func TestRosterEnforced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ck, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cid, _ := peer.IDFromPrivateKey(ck)
	type peerT struct {
		h      host.Host
		gate   *RosterGate
		topics *Topics
		got    chan RosterChange
	}
	mk := func(key crypto.PrivKey) *peerT {
		p := &peerT{gate: NewRosterGate(cid), got: make(chan RosterChange, 8)}
		p.h = newHost(t, HostConfig{Key: key, Roster: p.gate})
		ps, err := NewPubSub(ctx, p.h)
		if err != nil {
			t.Fatal(err)
		}
		if p.topics, err = JoinTopics(ps, testSwarm, nil); err != nil {
			t.Fatal(err)
		}
		return p
	}
	coord := mk(ck)
	m1, m2, out := mk(nil), mk(nil), mk(nil)
	for _, p := range []*peerT{m1, m2} {
		if err := FollowRoster(ctx, p.h, p.topics, p.gate, func(c RosterChange) { p.got <- c }); err != nil {
			t.Fatal(err)
		}
	}
	mustConnect(t, m1.h, coord.h)
	mustConnect(t, out.h, coord.h)

	path := filepath.Join(t.TempDir(), "roster")
	sign := func(seq uint64, ids ...peer.ID) {
		r := protocol.NewRoster(seq, time.Now().UnixMilli(), ids)
		if err := r.Sign(ck); err != nil {
			t.Fatal(err)
		}
		if err := SaveRosterFile(path, r); err != nil {
			t.Fatal(err)
		}
	}
	sign(1, m1.h.ID(), m2.h.ID())
	ServeRosterFile(ctx, coord.h, coord.topics, coord.gate, path, 20*time.Millisecond,
		func(c RosterChange) { coord.got <- c }, func(err error) { t.Errorf("roster file: %v", err) })
	if c := <-coord.got; c.Roster.Seq != 1 || len(c.Cut) != 1 || c.Cut[0] != out.h.ID() {
		t.Fatalf("coordinator applied %+v, want seq 1 cutting the outsider", c)
	}
	if c := <-m1.got; c.Roster.Seq != 1 {
		t.Fatalf("m1 got seq %d", c.Roster.Seq)
	}
	refused(t, out.h, coord.h)
	// m2 joins late: gossip is gone, the roster is fetched on connect.
	mustConnect(t, m2.h, coord.h)
	if c := <-m2.got; c.Roster.Seq != 1 || c.From != coord.h.ID() {
		t.Fatalf("m2 got %+v", c)
	}
	mustConnect(t, m2.h, m1.h)

	// Revoke m2: everyone cuts it.
	sign(2, m1.h.ID())
	if c := <-coord.got; c.Roster.Seq != 2 {
		t.Fatalf("coordinator applied seq %d", c.Roster.Seq)
	}
	if c := <-m1.got; c.Roster.Seq != 2 {
		t.Fatalf("m1 got seq %d", c.Roster.Seq)
	}
	waitConns(t, m2.h, func() bool {
		return m2.h.Network().Connectedness(coord.h.ID()) != network.Connected &&
			m2.h.Network().Connectedness(m1.h.ID()) != network.Connected
	})
	refused(t, m2.h, m1.h)
	refused(t, m2.h, coord.h)

	// A roster signed by another key is refused, and an old one is stale.
	other, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	forged := protocol.NewRoster(9, 1, []peer.ID{out.h.ID()})
	forged.Sign(other)
	if _, err := m1.gate.Apply(forged); err == nil {
		t.Fatal("a roster from an untrusted signer was applied")
	}
	old := protocol.NewRoster(1, 1, []peer.ID{m2.h.ID()})
	old.Sign(ck)
	if _, err := m1.gate.Apply(old); err == nil {
		t.Fatal("an older roster was applied")
	}
}

// refused checks that a cannot keep a connection to b: the dial fails, or
// b's gater closes it right after the handshake (the dialler may see the
// handshake complete first).
func refused(t *testing.T, a, b host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := connect(ctx, a, b); err == nil {
		waitConns(t, a, func() bool { return len(a.Network().ConnsToPeer(b.ID())) == 0 })
	}
}
