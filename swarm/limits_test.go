package swarm

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"carryon/protocol"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
)

// holdStreams opens n streams of protocol.EmbedProtocol from client to
// server at once and keeps every one open until all have either reached the
// server's handler or failed, as a coordinator keeps many jobs in flight to
// one node. It returns how many completed a request/response exchange.
func holdStreams(t *testing.T, client, server host.Host, n int) int {
	t.Helper()
	var (
		mu       sync.Mutex
		settled  int // streams in the handler or failed
		released = make(chan struct{})
	)
	settle := func() {
		mu.Lock()
		defer mu.Unlock()
		if settled++; settled == n {
			close(released)
		}
	}
	server.SetStreamHandler(protocol.EmbedProtocol, func(s network.Stream) {
		defer s.Close()
		var b [1]byte
		if _, err := io.ReadFull(s, b[:]); err != nil {
			s.Reset()
			return
		}
		settle()
		<-released
		s.Write(b[:])
	})
	t.Cleanup(func() { server.RemoveStreamHandler(protocol.EmbedProtocol) })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	ok := make(chan bool, n)
	for i := range n {
		wg.Go(func() {
			res := exchange(ctx, client, server, byte(i))
			if !res {
				settle()
			}
			ok <- res
		})
	}
	wg.Wait()
	close(ok)
	good := 0
	for r := range ok {
		if r {
			good++
		}
	}
	return good
}

// exchange sends one byte on a new stream and reads it back.
func exchange(ctx context.Context, client, server host.Host, v byte) bool {
	s, err := client.NewStream(ctx, server.ID(), protocol.EmbedProtocol)
	if err != nil {
		return false
	}
	defer s.Close()
	if _, err := s.Write([]byte{v}); err != nil {
		s.Reset()
		return false
	}
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil || b[0] != v {
		s.Reset()
		return false
	}
	return true
}

// TestStreamLimits: 200 concurrent embedding streams from one peer all
// succeed on a carryon host. The control half shows the test bites: a host
// with libp2p's default resource manager refuses some of them (its inbound
// limit per protocol per peer is 64 plus 4 per GiB of the memory it
// scales to: about 75 on a 24 GiB machine).
func TestStreamLimits(t *testing.T) {
	const n = 200
	client, server := newHost(t, HostConfig{}), newHost(t, HostConfig{})
	mustConnect(t, client, server)
	if got := holdStreams(t, client, server, n); got != n {
		t.Fatalf("%d of %d concurrent embedding streams succeeded on a carryon host", got, n)
	}

	plain, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	mustConnect(t, client, plain)
	got := holdStreams(t, client, plain, n)
	t.Logf("libp2p's default limits admitted %d of %d concurrent streams", got, n)
	if got >= n {
		t.Fatalf("libp2p's default limits admitted all %d streams: the test no longer shows the raise matters", n)
	}
}
