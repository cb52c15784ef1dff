package swarm

import (
	"context"
	"strings"
	"testing"
	"time"

	"carryon/protocol"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
)

const testSwarm = "test"

var baseHash = strings.Repeat("ab", 32)

func privKey(t testing.TB, h host.Host) crypto.PrivKey {
	k := h.Peerstore().PrivKey(h.ID())
	if k == nil {
		t.Fatal("no private key in the peerstore")
	}
	return k
}

func announce(t testing.TB, k crypto.PrivKey, step int, blob string) *protocol.AdaptorAnnounce {
	t.Helper()
	a := &protocol.AdaptorAnnounce{V: protocol.Version, CID: CIDOf([]byte(blob)).String(), BaseHash: baseHash, Step: step,
		Size: int64(len(blob)), Metrics: map[string]float64{"val_loss": 2.5}, UnixMilli: time.Now().UnixMilli()}
	if k != nil {
		if err := a.Sign(k); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func frameOf(t testing.TB, m protocol.Message) []byte {
	t.Helper()
	b, err := protocol.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rejectCounter is a pubsub tracer that reports validation rejections.
type rejectCounter struct{ rejected chan string }

func (r *rejectCounter) RejectMessage(_ *pubsub.Message, reason string) {
	select {
	case r.rejected <- reason:
	default:
	}
}
func (*rejectCounter) OnNewOutboundStream(peer.ID, libp2pproto.ID)          {}
func (*rejectCounter) OnClosedOutboundStream(peer.ID)                       {}
func (*rejectCounter) Join(string)                                          {}
func (*rejectCounter) Leave(string)                                         {}
func (*rejectCounter) Graft(peer.ID, string)                                {}
func (*rejectCounter) Prune(peer.ID, string)                                {}
func (*rejectCounter) ValidateMessage(*pubsub.Message)                      {}
func (*rejectCounter) DeliverMessage(*pubsub.Message)                       {}
func (*rejectCounter) DuplicateMessage(*pubsub.Message)                     {}
func (*rejectCounter) ThrottlePeer(peer.ID)                                 {}
func (*rejectCounter) RecvRPC(*pubsub.RPC)                                  {}
func (*rejectCounter) SendRPC(*pubsub.RPC, peer.ID)                         {}
func (*rejectCounter) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {}
func (*rejectCounter) DropRPC(*pubsub.RPC, peer.ID)                         {}
func (*rejectCounter) UndeliverableMessage(*pubsub.Message)                 {}

type member struct {
	h      host.Host
	topics *Topics
	sub    *pubsub.Subscription
	rej    *rejectCounter
}

func newMember(t *testing.T, ctx context.Context, trusted []peer.ID, h host.Host) *member {
	m := &member{h: h, rej: &rejectCounter{rejected: make(chan string, 64)}}
	ps, err := newPubSub(ctx, h, pubsub.WithRawTracer(m.rej))
	if err != nil {
		t.Fatal(err)
	}
	if m.topics, err = JoinTopics(ps, testSwarm, trusted); err != nil {
		t.Fatal(err)
	}
	if m.sub, err = m.topics.Adaptors.Subscribe(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.sub.Cancel(); m.topics.Close() })
	return m
}

// TestGossipAnnouncements: three members; the trusted coordinator's signed
// announcement, published right after joining, reaches both others; forged
// and malformed announcements from a rogue peer are rejected and never
// delivered.
func TestGossipAnnouncements(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hc, h1, h2, hr := newHost(t, HostConfig{}), newHost(t, HostConfig{}), newHost(t, HostConfig{}), newHost(t, HostConfig{})
	trusted := []peer.ID{hc.ID()}
	coord, n1, n2 := newMember(t, ctx, trusted, hc), newMember(t, ctx, trusted, h1), newMember(t, ctx, trusted, h2)
	for _, pair := range [][2]host.Host{{hc, h1}, {hc, h2}, {h1, h2}, {hr, h1}, {hr, h2}} {
		mustConnect(t, pair[0], pair[1])
	}
	waitGossipPeers(t, func() bool { return len(coord.topics.Adaptors.ListPeers()) == 2 })

	first := announce(t, privKey(t, hc), 10, "adaptor v10")
	if err := Publish(ctx, coord.topics.Adaptors, first); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*member{n1, n2} {
		got := nextAnnounce(t, ctx, n)
		if got.CID != first.CID || got.Step != 10 {
			t.Fatalf("%s got %+v, want the step-10 announcement", n.h.ID(), got)
		}
	}

	// A rogue peer with a plain pubsub (no validators) publishes forgeries.
	rps, err := pubsub.NewGossipSub(ctx, hr, pubsub.WithFloodPublish(true))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := rps.Join(protocol.AdaptorsTopic(testSwarm))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	waitGossipPeers(t, func() bool { return len(rt.ListPeers()) == 2 })
	signedByCoord := announce(t, privKey(t, hc), 11, "coordinator's, republished by the rogue")
	tampered := announce(t, privKey(t, hc), 12, "tampered")
	tampered.Step = 99
	forgeries := map[string][]byte{
		"untrusted signer":  frameOf(t, announce(t, privKey(t, hr), 13, "rogue's own")),
		"signer not author": frameOf(t, signedByCoord),
		"bad signature":     frameOf(t, tampered),
		"unsigned":          frameOf(t, announce(t, nil, 14, "unsigned")),
		"malformed":         []byte("\x07\x01\x00\x00\x00\x03abc"),
		"wrong type":        frameOf(t, &protocol.Ack{V: protocol.Version, JobID: "1f", OK: true}),
	}
	for name, b := range forgeries {
		if err := rt.Publish(ctx, b); err != nil {
			t.Fatalf("rogue publish %s: %v", name, err)
		}
	}
	for _, n := range []*member{n1, n2} {
		for range forgeries {
			select {
			case reason := <-n.rej.rejected:
				if reason != pubsub.RejectValidationFailed {
					t.Errorf("rejected for %q, want %q", reason, pubsub.RejectValidationFailed)
				}
			case <-ctx.Done():
				t.Fatal("forgeries were not all rejected")
			}
		}
	}

	// Stale and duplicate announcements are ignored locally: Publish fails.
	if err := Publish(ctx, coord.topics.Adaptors, announce(t, privKey(t, hc), 9, "older")); err == nil {
		t.Error("stale step published")
	}
	second := announce(t, privKey(t, hc), 20, "adaptor v20")
	if err := Publish(ctx, coord.topics.Adaptors, second); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*member{n1, n2} {
		if got := nextAnnounce(t, ctx, n); got.CID != second.CID {
			t.Fatalf("after the forgeries %s got %+v, want step 20", n.h.ID(), got)
		}
	}
}

func nextAnnounce(t *testing.T, ctx context.Context, n *member) *protocol.AdaptorAnnounce {
	t.Helper()
	msg, err := n.sub.Next(ctx)
	if err != nil {
		t.Fatalf("%s: %v", n.h.ID(), err)
	}
	m, err := protocol.Unmarshal(msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	return m.(*protocol.AdaptorAnnounce)
}

func TestPublishChecksSize(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := newHost(t, HostConfig{})
	ps, err := NewPubSub(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	topics, err := JoinTopics(ps, testSwarm, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer topics.Close()
	big := &protocol.EmbedResult{V: protocol.Version, JobID: "1", ChunkID: baseHash, Codec: "f32", Rows: 100, Dim: 256, Data: make([]byte, 100<<10)}
	err = Publish(ctx, topics.Nodes, big)
	if err == nil || !strings.Contains(err.Error(), "over the 65536-byte gossip limit") {
		t.Fatalf("Publish of a 100 KiB message: %v", err)
	}
	if err := Publish(ctx, topics.Nodes, &protocol.Advert{V: protocol.Version}); err == nil {
		t.Fatal("Publish of an invalid advert succeeded")
	}
	ad := &protocol.Advert{V: protocol.Version, Peer: h.ID().String(), Device: "cpu", UnixMilli: 1}
	if err := Publish(ctx, topics.Nodes, ad); err != nil {
		t.Fatalf("Publish of a valid advert: %v", err)
	}
}

// fakeMsg builds a pubsub message from author carrying data.
func fakeMsg(author peer.ID, data []byte) *pubsub.Message {
	return &pubsub.Message{Message: &pb.Message{From: []byte(author), Data: data}}
}

func TestValidators(t *testing.T) {
	coordKey := newHost(t, HostConfig{})
	other := newHost(t, HostConfig{})
	ck, ok := privKey(t, coordKey), privKey(t, other)
	cid, oid := coordKey.ID(), other.ID()
	ctx := context.Background()
	const (
		A = pubsub.ValidationAccept
		R = pubsub.ValidationReject
		I = pubsub.ValidationIgnore
	)

	av := newAnnounceValidator([]peer.ID{cid})
	steps := []struct {
		name   string
		author peer.ID
		data   []byte
		want   pubsub.ValidationResult
	}{
		{"first", cid, frameOf(t, announce(t, ck, 5, "a")), A},
		{"newer", cid, frameOf(t, announce(t, ck, 6, "b")), A},
		{"same step", cid, frameOf(t, announce(t, ck, 6, "c")), I},
		{"older step", cid, frameOf(t, announce(t, ck, 1, "d")), I},
		{"duplicate CID", cid, frameOf(t, announce(t, ck, 7, "a")), I},
		{"untrusted", oid, frameOf(t, announce(t, ok, 8, "e")), R},
		{"author differs", oid, frameOf(t, announce(t, ck, 9, "f")), R},
		{"garbage", cid, []byte{1, 2, 3}, R},
		{"advert on adaptors", cid, frameOf(t, &protocol.Advert{V: protocol.Version, Peer: cid.String(), Device: "cpu", UnixMilli: 1}), R},
	}
	for _, s := range steps {
		if got := av.validate(ctx, s.author, fakeMsg(s.author, s.data)); got != s.want {
			t.Errorf("announce %s: %v, want %v", s.name, got, s.want)
		}
	}
	// Without trusted signers any self-signed author is accepted.
	if got := newAnnounceValidator(nil).validate(ctx, oid, fakeMsg(oid, frameOf(t, announce(t, ok, 1, "x")))); got != A {
		t.Errorf("open swarm announcement: %v", got)
	}

	nv := newAdvertValidator()
	advert := func(p peer.ID, ms int64) []byte {
		return frameOf(t, &protocol.Advert{V: protocol.Version, Peer: p.String(), Device: "cpu", UnixMilli: ms})
	}
	for _, s := range []struct {
		name   string
		author peer.ID
		data   []byte
		want   pubsub.ValidationResult
	}{
		{"advert", oid, advert(oid, 100), A},
		{"newer advert", oid, advert(oid, 200), A},
		{"stale advert", oid, advert(oid, 150), I},
		{"advert for another peer", cid, advert(oid, 300), R},
		{"announce on nodes", cid, frameOf(t, announce(t, ck, 1, "z")), R},
		{"oversized", oid, make([]byte, protocol.MaxGossipBytes+1), R},
	} {
		if got := nv.validate(ctx, s.author, fakeMsg(s.author, s.data)); got != s.want {
			t.Errorf("%s: %v, want %v", s.name, got, s.want)
		}
	}
}
