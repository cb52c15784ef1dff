package swarm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"carryon/protocol"

	"github.com/ipfs/boxo/blockstore"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
)

func newDiscovery(t *testing.T, ctx context.Context, h host.Host, cfg DiscoveryConfig) *Discovery {
	t.Helper()
	d, err := NewDiscovery(ctx, h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestDHTProviders: five hosts of a private swarm, each connected only to
// the first. An honest host and a liar (serving other bytes under the CIDs)
// provide a file; a host that was told of neither finds both through the
// DHT and gets the file over bitswap, hash-checked, from the honest one.
func TestDHTProviders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := psk(t)
	swarmName := protocol.SwarmName(key)
	var hosts []host.Host
	var ds []*Discovery
	for i := range 5 {
		h := newHost(t, HostConfig{PSK: key})
		if i > 0 {
			mustConnect(t, h, hosts[0])
		}
		hosts = append(hosts, h)
		ds = append(ds, newDiscovery(t, ctx, h, DiscoveryConfig{Swarm: swarmName, Private: true, DHT: DHTServer}))
	}
	boot, honest, liar := hosts[0], hosts[1], hosts[2]

	// The private swarm's DHT speaks its own protocol, never the IPFS one.
	want := libp2pproto.ID("/carryon/" + swarmName + "/kad/1.0.0")
	protos := boot.Mux().Protocols()
	if !slices.Contains(protos, want) || slices.Contains(protos, "/ipfs/kad/1.0.0") {
		t.Fatalf("DHT protocols %v: want %s and not /ipfs/kad/1.0.0", protos, want)
	}

	exchange := func(h host.Host, d *Discovery, wrap func(blockstore.Blockstore) blockstore.Blockstore) *Exchange {
		b := openBlocks(t)
		if wrap != nil {
			b.bs = wrap(b.bs)
		}
		x, err := NewExchange(h, b, ExchangeConfig{Routing: d.DHT()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { x.Close() })
		return x
	}
	data := randomBlob(1<<20+123, 7)
	xh := exchange(honest, ds[1], nil)
	xl := exchange(liar, ds[2], func(bs blockstore.Blockstore) blockstore.Blockstore { return lyingStore{bs} })
	c, _ := xh.Blocks().AddBytes(ctx, data)
	xl.Blocks().AddBytes(ctx, data)
	for _, i := range []int{1, 2} {
		if err := ds[i].Provide(ctx, c); err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
	}
	found, err := ds[4].FindProviders(ctx, c, 0)
	if err != nil {
		t.Fatal(err)
	}
	var provs []peer.ID
	for ai := range found {
		provs = append(provs, ai.ID)
	}
	if len(provs) != 2 || !slices.Contains(provs, honest.ID()) || !slices.Contains(provs, liar.ID()) {
		t.Fatalf("providers %v, want the honest host %s and the liar %s", provs, honest.ID(), liar.ID())
	}

	// hosts[4] may be connected to neither provider (only to the
	// bootstrap host, which lacks the file): the DHT names them.
	x4 := exchange(hosts[4], ds[4], nil)
	st, err := x4.Fetch(ctx, c, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := x4.Blocks().Get(ctx, c, 0)
	if !bytes.Equal(got, data) || st.Peers[liar.ID()] != 0 || st.Peers[honest.ID()] == 0 {
		t.Fatalf("fetched %d bytes, blocks per peer %v: want the file from the honest host %s", len(got), st.Peers, honest.ID())
	}

	// A CID nobody provides: the search ends without a provider.
	missing := CIDOf([]byte("nobody has this"))
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	found, err = ds[3].FindProviders(sctx, missing, 0)
	if err != nil {
		t.Fatal(err)
	}
	for ai := range found {
		t.Fatalf("a provider of an unprovided CID: %s", ai.ID)
	}
}

func TestDHTModesAndPrefixes(t *testing.T) {
	for _, s := range []string{"off", "auto", "server", "client"} {
		m, err := ParseDHTMode(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseDHTMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseDHTMode("on"); err == nil {
		t.Error("ParseDHTMode accepted \"on\"")
	}
	if p := DHTPrefix("public", false); p != "/ipfs" {
		t.Errorf("public swarm DHT prefix %s, want the IPFS DHT's /ipfs", p)
	}
	h := newHost(t, HostConfig{})
	d := newDiscovery(t, context.Background(), h, DiscoveryConfig{Swarm: "public"})
	if err := d.Provide(context.Background(), CIDOf(nil)); !errors.Is(err, ErrNoDHT) {
		t.Errorf("Provide without a DHT: %v, want ErrNoDHT", err)
	}
}

// TestMDNS: two hosts find each other by multicast DNS. mDNS multicasts on
// every multicast-capable interface, so the test never runs in the
// machine's own network: as root it re-runs itself inside a fresh network
// namespace whose only interface is loopback (multicast switched on), and
// skips elsewhere.
func TestMDNS(t *testing.T) {
	if os.Getenv("CARRYON_MDNS_NETNS") == "" {
		runInNetns(t, "TestMDNS")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	a, b := newHost(t, HostConfig{}), newHost(t, HostConfig{})
	found := make(chan peer.ID, 4)
	newDiscovery(t, ctx, a, DiscoveryConfig{Swarm: "mdnstest", MDNS: true})
	newDiscovery(t, ctx, b, DiscoveryConfig{Swarm: "mdnstest", MDNS: true, OnPeerFound: func(ai peer.AddrInfo, err error) {
		if err == nil {
			found <- ai.ID
		}
	}})
	// A host of another swarm announces a different service: never found.
	other := newHost(t, HostConfig{})
	newDiscovery(t, ctx, other, DiscoveryConfig{Swarm: "otherswarm", MDNS: true})
	for {
		select {
		case id := <-found:
			if id == other.ID() {
				t.Fatal("mDNS found a host of another swarm")
			}
			if id != a.ID() {
				continue
			}
			if len(b.Network().ConnsToPeer(a.ID())) == 0 {
				t.Fatal("found by mDNS but not connected")
			}
			return
		case <-ctx.Done():
			t.Fatal("mDNS found no peer")
		}
	}
}

// runInNetns re-runs test inside a new network namespace with only a
// multicast-capable loopback, or skips where that is not possible.
func runInNetns(t *testing.T, test string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace (mDNS must not multicast on the machine's network)")
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("needs the ip command (Debian package iproute2) to make a network namespace")
	}
	ns := fmt.Sprintf("comdns%d", os.Getpid())
	if out, err := exec.Command(ip, "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("network namespaces not allowed here: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(ip, "netns", "del", ns).Run() })
	for _, args := range [][]string{{"link", "set", "lo", "multicast", "on"}, {"link", "set", "lo", "up"}} {
		if out, err := exec.Command(ip, append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	cmd := exec.Command(ip, "netns", "exec", ns, os.Args[0], "-test.run", "^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "CARRYON_MDNS_NETNS="+ns)
	out, err := cmd.CombinedOutput()
	t.Logf("inside network namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("%s in a network namespace: %v", test, err)
	}
	if strings.Contains(string(out), "--- SKIP") {
		t.Skip("skipped inside the namespace")
	}
}

// graftTracer reports the peers grafted into a topic's mesh.
type graftTracer struct {
	*rejectCounter
	grafted chan peer.ID
}

func (g *graftTracer) Graft(p peer.ID, _ string) {
	select {
	case g.grafted <- p:
	default:
	}
}

// TestPublishRightAfterJoining: a peer subscribes, connects to a member and
// publishes at once, before gossipsub's heartbeat has built its mesh. With
// flood publishing (NewPubSub) the message reaches the member; without it
// the publisher sends only to its still empty mesh and the message is lost,
// so the member's first message would be the second one, published after
// the mesh formed.
func TestPublishRightAfterJoining(t *testing.T) {
	if n := floodPublishLost(t, nil); n != "" {
		t.Fatal(n)
	}
	// The control (not asserted: it races the heartbeat, though it lost the
	// message in 20 of 20 runs here): without flood publishing.
	if n := floodPublishLost(t, []pubsub.Option{pubsub.WithFloodPublish(false)}); n != "" {
		t.Logf("control, flood publishing off: %s", n)
	} else {
		t.Logf("control, flood publishing off: the message arrived this time (the mesh formed first)")
	}
}

// floodPublishLost runs the scenario with extra pubsub options for the
// publisher; it returns "" when the first message arrived first.
func floodPublishLost(t *testing.T, extra []pubsub.Option) string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const topic = "carryon-test/flood"
	member, pub := newHost(t, HostConfig{}), newHost(t, HostConfig{})
	mps, err := NewPubSub(ctx, member)
	if err != nil {
		t.Fatal(err)
	}
	mt, err := mps.Join(topic)
	if err != nil {
		t.Fatal(err)
	}
	msub, err := mt.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer msub.Cancel()

	tr := &graftTracer{rejectCounter: &rejectCounter{rejected: make(chan string, 1)}, grafted: make(chan peer.ID, 16)}
	pps, err := newPubSub(ctx, pub, append([]pubsub.Option{pubsub.WithRawTracer(tr)}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := pps.Join(topic)
	if err != nil {
		t.Fatal(err)
	}
	psub, err := pt.Subscribe() // the publisher is in the topic's mesh, with no peers yet
	if err != nil {
		t.Fatal(err)
	}
	defer psub.Cancel()
	mustConnect(t, pub, member)
	waitGossipPeers(t, func() bool { return slices.Contains(pt.ListPeers(), member.ID()) })
	if err := pt.Publish(ctx, []byte("first")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tr.grafted: // the heartbeat built the mesh
	case <-ctx.Done():
		t.Fatal("no mesh formed")
	}
	if err := pt.Publish(ctx, []byte("second")); err != nil {
		t.Fatal(err)
	}
	msg, err := msub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Data) != "first" {
		return fmt.Sprintf("the member's first message is %q: the one published right after joining was lost", msg.Data)
	}
	return ""
}

// TestProvideWithoutDHTPeers: a host alone in its swarm (a private LAN
// swarm whose hosts do not run a DHT server) cannot announce: the error
// says so in a way callers can recognise and tell the user once.
func TestProvideWithoutDHTPeers(t *testing.T) {
	h := newHost(t, HostConfig{PSK: psk(t)})
	d := newDiscovery(t, context.Background(), h, DiscoveryConfig{Swarm: "alone", Private: true, DHT: DHTServer})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := d.Provide(ctx, CIDOf([]byte("an adaptor")))
	if !errors.Is(err, ErrNoDHTPeers) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Provide with no DHT peers = %v, want ErrNoDHTPeers", err)
	}
}
