package swarm

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"

	"carryon/internal/testenv"
)

// TestHolePunchNamespaces opens a direct connection between two volunteers
// behind separate NATs, each a real process in its own network namespace:
//
//	homeA 192.168.10.2 ─ rtrA (NAT, 11.1.0.2) ─┐
//	                                             inet (relay at 11.1.0.1, routes 11.1/16 ↔ 11.2/16)
//	homeB 192.168.20.2 ─ rtrB (NAT, 11.2.0.2) ─┘
//
// Each router masquerades its home network and drops connections that
// start on its Internet side, so neither volunteer can dial the other. A
// reserves a slot on the relay; B dials A through it; DCUtR then punches a
// direct connection through both NATs. B sends 1 MiB over it (a relayed
// connection carries at most 128 KiB and refuses streams not marked for
// limited connections), and each side reports the path as hole-punched.
func TestHolePunchNamespaces(t *testing.T) {
	testenv.RequireNetns(t)
	inet := testenv.NewNetns(t, "inet")
	rtrA, rtrB := testenv.NewNetns(t, "rtrA"), testenv.NewNetns(t, "rtrB")
	homeA, homeB := testenv.NewNetns(t, "homeA"), testenv.NewNetns(t, "homeB")
	testenv.Link(t, inet, "a0", "11.1.0.1/24", rtrA, "wan", "11.1.0.2/24")
	testenv.Link(t, inet, "b0", "11.2.0.1/24", rtrB, "wan", "11.2.0.2/24")
	inet.Exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	testenv.Link(t, rtrA, "lan", "192.168.10.1/24", homeA, "eth0", "192.168.10.2/24")
	testenv.Link(t, rtrB, "lan", "192.168.20.1/24", homeB, "eth0", "192.168.20.2/24")
	rtrA.IP("route", "add", "default", "via", "11.1.0.1")
	rtrB.IP("route", "add", "default", "via", "11.2.0.1")
	homeA.IP("route", "add", "default", "via", "192.168.10.1")
	homeB.IP("route", "add", "default", "via", "192.168.20.1")
	testenv.HomeRouter(rtrA, "wan")
	testenv.HomeRouter(rtrB, "wan")

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	relay := startRole(t, inet, "relay", nil)
	relayAddr := relay.wait(t, ctx, "relay ")
	a := startRole(t, homeA, "a", []string{"CARRYON_HP_RELAY=" + relayAddr})
	circuit := a.wait(t, ctx, "relayed ")
	b := startRole(t, homeB, "b", []string{"CARRYON_HP_RELAY=" + relayAddr, "CARRYON_HP_TARGET=" + circuit})

	aID := circuit[strings.LastIndex(circuit, "/")+1:]
	if got := b.wait(t, ctx, "reachable: hole-punched "); got != aID {
		t.Fatalf("B reports a hole-punched path to %s, want A (%s)", got, aID)
	}
	if got := b.wait(t, ctx, "sent over "); !strings.HasPrefix(got, "/ip4/11.1.0.2/tcp/") {
		t.Fatalf("B's direct connection goes to %s, want A's NAT address 11.1.0.2", got)
	}
	if got := a.wait(t, ctx, "got "); got != fmt.Sprintf("%d from B over hole-punched", 1<<20) {
		t.Fatalf("A: %q", got)
	}
	for _, r := range []*testenv.Netns{rtrA, rtrB} {
		if n := testenv.Masqueraded(r); n < 2 {
			t.Errorf("%s masqueraded %d connections, want its relay connection and the punched one", r.Name, n)
		}
	}
}

// hpProto is the test's bulk-transfer protocol over the punched connection.
const hpProto = protocol.ID("/carryon-test/holepunch/1.0.0")

// TestHolePunchHelper is the body of TestHolePunchNamespaces' processes
// (the test binary run again inside a namespace with CARRYON_HP_ROLE set);
// it skips when run as a test.
func TestHolePunchHelper(t *testing.T) {
	role := os.Getenv("CARRYON_HP_ROLE")
	if role == "" {
		t.Skip("helper process of TestHolePunchNamespaces")
	}
	if err := holePunchRole(role); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func holePunchRole(role string) error {
	ctx := context.Background()
	if role == "relay" {
		h, err := NewHost(HostConfig{ListenAddrs: []string{"/ip4/11.1.0.1/tcp/4001"},
			NAT: &NATConfig{RelayService: true, Reachability: network.ReachabilityPublic}})
		if err != nil {
			return err
		}
		fmt.Printf("relay /ip4/11.1.0.1/tcp/4001/p2p/%s\n", h.ID())
		select {}
	}
	ra, err := peer.AddrInfoFromString(os.Getenv("CARRYON_HP_RELAY"))
	if err != nil {
		return err
	}
	h, err := NewHost(HostConfig{ListenAddrs: []string{"/ip4/0.0.0.0/tcp/4002"},
		NAT: &NATConfig{RelayClient: true, HolePunching: true, Relays: []peer.AddrInfo{*ra},
			Reachability: network.ReachabilityPrivate}})
	if err != nil {
		return err
	}
	var target *peer.AddrInfo
	if role == "b" {
		if target, err = peer.AddrInfoFromString(os.Getenv("CARRYON_HP_TARGET")); err != nil {
			return err
		}
	}
	// libp2p's DCUtR service starts once identify has told the host a public
	// (here: NAT) address, and only relayed connections that arrive after
	// that are punched: each side waits for it before taking part.
	if err := waitProtocol(ctx, h, holepunch.Protocol); err != nil {
		return err
	}
	punched := make(chan struct{})
	WatchPaths(ctx, h, func(p peer.ID, path Path) {
		if p == ra.ID {
			return
		}
		fmt.Printf("reachable: %s %s\n", path, p)
		if target != nil && p == target.ID && path == PathHolePunched {
			close(punched)
			target = nil
		}
	})
	switch role {
	case "a":
		h.SetStreamHandler(hpProto, func(s network.Stream) {
			n, _ := io.Copy(io.Discard, s)
			fmt.Printf("got %d from B over %s\n", n, PathTo(h, s.Conn().RemotePeer()))
			s.Write([]byte{1})
			s.Close()
		})
		reported := false
		if err := WatchReach(ctx, h, func(r Reach) {
			if len(r.Relayed) > 0 && !reported {
				reported = true
				fmt.Printf("relayed %s/p2p/%s\n", r.Relayed[0], h.ID())
			}
		}); err != nil {
			return err
		}
		select {} // until the test kills it
	case "b":
		ai := *target
		if err := h.Connect(ctx, ai); err != nil {
			return fmt.Errorf("connect to A through the relay: %w", err)
		}
		select {
		case <-punched:
		case <-time.After(60 * time.Second):
			return fmt.Errorf("no hole-punched path to A; path %s", PathTo(h, ai.ID))
		}
		s, err := h.NewStream(ctx, ai.ID, hpProto)
		if err != nil {
			return err
		}
		if _, err := s.Write(make([]byte, 1<<20)); err != nil {
			return err
		}
		s.CloseWrite()
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		fmt.Printf("sent over %s\n", s.Conn().RemoteMultiaddr())
		h.Close()
		return nil
	}
	return fmt.Errorf("unknown role %q", role)
}

// waitProtocol waits until h serves proto.
func waitProtocol(ctx context.Context, h host.Host, proto protocol.ID) error {
	sub, err := h.EventBus().Subscribe(new(event.EvtLocalProtocolsUpdated))
	if err != nil {
		return err
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for !slices.Contains(h.Mux().Protocols(), proto) {
		select {
		case <-sub.Out():
		case <-ctx.Done():
			return fmt.Errorf("%s never served %s", h.ID(), proto)
		}
	}
	return nil
}

// roleProc is one helper process and the lines it prints.
type roleProc struct {
	name  string
	lines chan string
}

func startRole(t *testing.T, ns *testenv.Netns, role string, env []string) *roleProc {
	t.Helper()
	cmd := ns.Command(os.Args[0], "-test.run=^TestHolePunchHelper$")
	cmd.Env = append(append(os.Environ(), "CARRYON_HP_ROLE="+role), env...)
	cmd.Stderr = &prefixWriter{t: t, prefix: role}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &roleProc{name: role, lines: make(chan string, 64)}
	stop, done := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { cmd.Process.Kill(); close(stop); <-done; cmd.Wait() })
	go func() {
		defer close(done)
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			t.Logf("%s: %s", role, sc.Text())
			select {
			case p.lines <- sc.Text():
			case <-stop:
				return
			}
		}
	}()
	return p
}

// wait returns the rest of the first line that starts with prefix.
func (p *roleProc) wait(t *testing.T, ctx context.Context, prefix string) string {
	t.Helper()
	return testenv.WaitLine(t, ctx, p.lines, p.name, prefix)
}

type prefixWriter struct {
	t      *testing.T
	prefix string
}

func (w *prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if l != "" {
			w.t.Logf("%s (stderr): %s", w.prefix, l)
		}
	}
	return len(b), nil
}
