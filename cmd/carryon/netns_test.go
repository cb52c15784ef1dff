package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"carryon/carryon"
	"carryon/internal/testenv"
	"carryon/protocol"
	"carryon/swarm"
)

// TestPullThroughDHT: `carryon pull CID` without --from finds the adaptor's
// providers through the private swarm's DHT, gets nothing from a stale
// provider record (a peer that announced the CID but no longer has it; the
// swarm package's tests cover peers that serve wrong bytes) and saves the
// verified adaptor.
func TestPullThroughDHT(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "swarm.key")
	k, psk, err := protocol.NewSwarmPSK()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, k, 0o600); err != nil {
		t.Fatal(err)
	}
	co, err := carryon.New(defaultShape(32, 259, 16, 1, 1), 1)
	if err != nil {
		t.Fatal(err)
	}
	adaptor, err := co.Marshal(carryon.Meta{BaseHash: "sha256:test", Bridge: "8", Step: 3})
	if err != nil {
		t.Fatal(err)
	}
	c := swarm.CIDOf(adaptor)

	var hosts []host.Host
	var discs []*swarm.Discovery
	for i := range 3 { // a bootstrap peer, a liar and the honest provider
		h, d := dhtServer(t, ctx, psk, hosts[:min(i, 1)]...) // the others join through the first
		hosts, discs = append(hosts, h), append(discs, d)
	}
	for i, h := range hosts[1:] {
		blocks, err := swarm.OpenBlocks(filepath.Join(dir, fmt.Sprint("provider", i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { blocks.Close() })
		if i == 1 { // only the second provider has the file
			if _, err := blocks.AddBytes(ctx, adaptor); err != nil {
				t.Fatal(err)
			}
		}
		x, err := swarm.NewExchange(h, blocks, swarm.ExchangeConfig{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { x.Close() })
	}
	for _, d := range discs[1:] {
		if err := d.Provide(ctx, c); err != nil {
			t.Fatal(err)
		}
	}

	boot := hosts[0].Addrs()[0].String() + "/p2p/" + hosts[0].ID().String()
	out := filepath.Join(dir, "pulled.safetensors")
	var stdout, stderr strings.Builder
	err = runPull(ctx, []string{c.String(), "--key", keyFile, "--bootstrap", boot, "--out", out, "--timeout", "20s",
		"--store", filepath.Join(dir, "puller")}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, stderr.String())
	}
	if want := "from " + hosts[2].ID().String(); !strings.Contains(stdout.String(), want) {
		t.Fatalf("pull output %q does not name the honest provider (%s)", stdout.String(), want)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, adaptor) {
		t.Fatalf("pulled file differs from the adaptor (%v)", err)
	}

	// Without --from or --bootstrap there is nowhere to search.
	if err := runPull(ctx, []string{c.String(), "--key", keyFile, "--store", filepath.Join(dir, "other")}, &stdout, &stderr); err == nil {
		t.Fatal("pull with neither --from nor --bootstrap succeeded")
	}
}

// TestNATNamespaces runs a real coordinator and a real node on either side
// of a masquerading "home router", each in its own network namespace:
//
//	public (coordinator, 10.201.0.1) ── router (10.201.0.2 | 192.168.77.1, MASQUERADE) ── home (node, 192.168.77.2)
//
// The public side has no route to the home network, so the coordinator
// cannot dial the node: the node dials out, and the coordinator leases its
// chunks back over that connection until the job completes. All traffic
// stays inside the namespaces.
func TestNATNamespaces(t *testing.T) {
	testenv.RequireNetns(t)
	pub, router, home := testenv.NewNetns(t, "pub"), testenv.NewNetns(t, "rtr"), testenv.NewNetns(t, "home")
	testenv.Link(t, pub, "wan0", "10.201.0.1/24", router, "wan1", "10.201.0.2/24")
	testenv.Link(t, router, "lan0", "192.168.77.1/24", home, "lan1", "192.168.77.2/24")
	home.IP("route", "add", "default", "via", "192.168.77.1")
	testenv.HomeRouter(router, "wan1")
	if out, err := exec.Command("ip", "-n", pub.Name, "route", "get", "192.168.77.2").CombinedOutput(); err == nil {
		t.Fatalf("the public namespace has a route to the home network:\n%s", out)
	}

	dir, bin, key, env := swarmSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	coord := start(t, env, "ip", "netns", "exec", pub.Name, bin, "coordinator", "--key", key,
		"--listen", "/ip4/10.201.0.1/tcp/4001", "--cache", filepath.Join(dir, "coord"), "--steps", "20")
	addr := coord.waitLine(t, ctx, "listening on ")
	node := start(t, env, "ip", "netns", "exec", home.Name, bin, "node", "--key", key,
		"--listen", "/ip4/192.168.77.2/tcp/0", "--bootstrap", addr, "--advert-interval", "300ms")
	if r := node.waitLine(t, ctx, "reachability: "); !strings.HasPrefix(r, swarm.NotReachable) {
		t.Errorf("the node behind the NAT says %q, want %q", r, swarm.NotReachable)
	}
	cidStr := coord.waitLine(t, ctx, "adaptor ")
	if _, err := protocol.ParseCID(cidStr); err != nil {
		t.Fatalf("coordinator printed adaptor %q: %v", cidStr, err)
	}

	// The node's connection really went through the NAT.
	n := testenv.Masqueraded(router)
	if n == 0 {
		t.Fatal("no connection was masqueraded")
	}
	t.Logf("adaptor %s trained from embeddings leased through the NAT (%d connections masqueraded)", cidStr, n)
}
