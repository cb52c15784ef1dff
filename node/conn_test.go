package node

import (
	"context"
	"crypto/rand"
	"log/slog"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"carryon/internal/testenv"
	"carryon/protocol"
	"carryon/swarm"
)

// waitLog waits until the log contains want.
func waitLog(t *testing.T, log *testenv.Log, want string) {
	t.Helper()
	log.Wait(t, want, 1, 10*time.Second)
}

// gossipHost is a host in the test swarm with its topics joined.
func gossipHost(t *testing.T, key crypto.PrivKey, listen string) (host.Host, *swarm.Topics) {
	t.Helper()
	cfg := swarm.HostConfig{Key: key}
	if listen != "" {
		cfg.ListenAddrs = []string{listen}
	}
	h, err := swarm.NewHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); h.Close() })
	ps, err := swarm.NewPubSub(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	topics, err := swarm.JoinTopics(ps, "nodetest", nil)
	if err != nil {
		t.Fatal(err)
	}
	return h, topics
}

// joinedNode makes a node with one test base on a fresh gossip host;
// beforeStart (if not nil) sees it before Start. It starts (and is closed
// when the test ends), and its host connects to coord.
func joinedNode(t *testing.T, cfg Config, coord host.Host, beforeStart func(*Node)) (*Node, host.Host) {
	t.Helper()
	nh, ntopics := gossipHost(t, nil, "")
	n, err := New(nh, ntopics, []Base{newTestBase()}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if beforeStart != nil {
		beforeStart(n)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := nh.Connect(context.Background(), peer.AddrInfo{ID: coord.ID(), Addrs: coord.Addrs()}); err != nil {
		t.Fatal(err)
	}
	return n, nh
}

// subscribed subscribes to topic until the test ends.
func subscribed(t *testing.T, topic *pubsub.Topic) *pubsub.Subscription {
	t.Helper()
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Cancel)
	return sub
}

// TestAnnounceOnJoinAndRedial: a node whose advert interval is an hour
// is seen by a coordinator as soon as the coordinator listens on the
// nodes topic (no interval to wait); when the coordinator is killed and a
// new one starts with the same identity and address, the node redials it
// by itself, says so at Info, and the new coordinator has its advert at
// once.
func TestAnnounceOnJoinAndRedial(t *testing.T) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	coord, ctopics := gossipHost(t, key, "")
	addr := coord.Addrs()[0]
	port, _ := addr.ValueForProtocol(ma.P_TCP)

	nh, ntopics := gossipHost(t, nil, "")
	var log testenv.Log
	cfg := DefaultLocalConfig()
	cfg.AdvertInterval = time.Hour
	cfg.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Bootstrap = []peer.AddrInfo{{ID: coord.ID(), Addrs: []ma.Multiaddr{addr}}}
	cfg.Redial = swarm.RedialConfig{Min: 20 * time.Millisecond, Max: 100 * time.Millisecond}
	n, err := New(nh, ntopics, []Base{newTestBase()}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	waitLog(t, &log, `msg="connected to bootstrap peer"`)

	// The node's first advert went out before anyone listened. Subscribing
	// now must bring one within far less than the hour.
	seeAdvert := func(topics *swarm.Topics) {
		t.Helper()
		sub, err := topics.Nodes.Subscribe()
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Cancel()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for {
			a, _, err := swarm.NextGossip[*protocol.Advert](ctx, sub)
			if err != nil {
				t.Fatalf("no advert from the node: %v\n%s", err, log.String())
			}
			if a.Peer == nh.ID().String() {
				return
			}
		}
	}
	seeAdvert(ctopics)
	waitLog(t, &log, `msg="coordinator listening for nodes; advertising"`)

	coord.Close() // as kill -9 would: the connection drops
	waitLog(t, &log, `msg="lost the connection to coordinator; redialling"`)
	// A real restart takes seconds, by which time gossip has dropped the
	// old peer. Restarting within milliseconds can race it: pubsub may
	// process the old connection's death after the new one's subscription
	// and forget that subscription (go-libp2p-pubsub keys peers by ID).
	// Neither pubsub's leave event nor its peer list says when it has
	// dropped the peer's outbound queue too (a leave can come first), so
	// this one wait polls, with time for the rest to happen.
	testenv.Poll(t, 10*time.Second, "gossip drops the closed coordinator", func() bool { return len(ntopics.Nodes.ListPeers()) == 0 })
	// And, as in a real restart, the node has found the coordinator gone
	// (a failed redial) before the new one listens: restarting inside the
	// first redial's 20 ms raced pubsub's cleanup (CI: 1 failure).
	waitLog(t, &log, `msg="cannot reach `)
	coord2, ctopics2 := gossipHost(t, key, "/ip4/127.0.0.1/tcp/"+port)
	_ = coord2
	seeAdvert(ctopics2)
	waitLog(t, &log, `msg="coordinator back"`)
}

// TestNoWorkForBase: a coordinator announces a job on another base; the
// node says at Warn that it has no work for its base.
func TestNoWorkForBase(t *testing.T) {
	coord, ctopics := gossipHost(t, nil, "")
	var log testenv.Log
	cfg := DefaultLocalConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(&log, nil))
	joinedNode(t, cfg, coord, nil)
	other := newTestBase().info
	other.Name, other.WeightsHash = "other", strings.Repeat("ab", 32)
	// A coordinator announces its job again and again; a gossip message
	// sent before pubsub has its stream to the node is dropped (pubsub
	// tells nobody when that stream opens), so announce as a coordinator
	// does, every 50 ms, until the node says it.
	for i := 1; !log.Within("no work for this node's base", 1, 50*time.Millisecond); i++ {
		if i > 200 {
			t.Fatalf("the node never said it has no work:\n%s", log.String())
		}
		ja := &protocol.JobAnnounce{V: protocol.Version, Job: "abc", Base: other, Codec: "q8", UnixMilli: int64(i)}
		if err := swarm.Publish(context.Background(), ctopics.Control, ja); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(log.String(), "other (abababababab)") {
		t.Errorf("the log does not name the job's base:\n%s", log.String())
	}
}
