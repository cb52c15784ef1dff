package swarm

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"carryon/protocol"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

func randomBlob(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

type doneEvent struct {
	p   peer.ID
	c   cid.Cid
	err error
}

// serveWithEvents serves s on h and reports each finished request.
func serveWithEvents(t *testing.T, h host.Host, s Store) <-chan doneEvent {
	events := make(chan doneEvent, 16)
	srv := &BlobServer{Store: s, IdleTimeout: 5 * time.Second,
		OnDone: func(p peer.ID, c cid.Cid, err error) { events <- doneEvent{p, c, err} }}
	t.Cleanup(srv.Serve(h))
	return events
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFetchBlob(t *testing.T) {
	server, client := newHost(t, HostConfig{}), newHost(t, HostConfig{})
	mustConnect(t, client, server)
	store := NewMemStore()
	events := serveWithEvents(t, server, store)
	data := randomBlob(3<<20+512<<10, 1) // 3.5 MiB: 4 chunks, the last one short
	c, _ := store.Put(data)

	got, err := FetchBlob(testCtx(t), client, server.ID(), c, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("fetched blob differs")
	}
	ev := <-events // the server's record of the transfer: acknowledged
	if ev.err != nil || ev.p != client.ID() || !ev.c.Equals(c) {
		t.Fatalf("server saw %+v, want an acknowledged transfer to the client", ev)
	}

	// Not found, and over the caller's size limit.
	missing := protocol.CIDOf([]byte("missing"))
	if _, err := FetchBlob(testCtx(t), client, server.ID(), missing, 0); !errors.Is(err, ErrNotFound) || protocol.KindOf(err) != protocol.KindNotFound {
		t.Fatalf("missing blob: %v, want ErrNotFound of kind not found", err)
	}
	<-events
	if _, err := FetchBlob(testCtx(t), client, server.ID(), c, 1<<20); err == nil {
		t.Fatal("a blob over maxSize was fetched")
	}
	if ev := <-events; ev.err == nil || !strings.Contains(ev.err.Error(), "fetcher rejected the transfer: blob is 3670016 bytes, over the 1048576-byte limit") {
		t.Fatalf("server saw %v, want the fetcher's rejection with its reason", ev.err)
	}
	// An empty blob is a manifest with no chunks.
	e, _ := store.Put(nil)
	if got, err := FetchBlob(testCtx(t), client, server.ID(), e, 0); err != nil || len(got) != 0 {
		t.Fatalf("empty blob: %d bytes, %v", len(got), err)
	}
}

// lyingStore returns data that differs from what the CID names.
type lyingStore struct{ Store }

func (s lyingStore) Get(c cid.Cid) ([]byte, error) {
	b, err := s.Store.Get(c)
	if err != nil {
		return nil, err
	}
	b = bytes.Clone(b)
	b[len(b)/2] ^= 1
	return b, nil
}

// serveCorruptChunk serves an honest manifest, then corrupts chunk 1, and
// reports the Ack it gets back.
func serveCorruptChunk(h host.Host, s Store, acks chan<- *protocol.Ack) {
	h.SetStreamHandler(protocol.BlobProtocol, func(st network.Stream) {
		defer st.Close()
		req, err := protocol.ReadExpect[*protocol.BlobRequest](st)
		if err != nil {
			return
		}
		c, _ := protocol.ParseCID(req.CID)
		data, _ := s.Get(c)
		m := makeManifest(c, data, 0)
		go func() { // write while the handler waits for the fetcher's answer
			protocol.WriteFrame(st, m)
			for i := range m.Chunks {
				chunk := bytes.Clone(data[i*m.ChunkSize : i*m.ChunkSize+m.ChunkLen(i)])
				if i == 1 {
					chunk[7] ^= 0x80
				}
				st.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if protocol.WriteFrame(st, &protocol.BlobChunk{V: protocol.Version, Index: i, Data: chunk}) != nil {
					return
				}
			}
		}()
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if ack, err := protocol.ReadExpect[*protocol.Ack](st); err == nil {
			acks <- ack
		}
	})
}

func TestLyingProviders(t *testing.T) {
	client := newHost(t, HostConfig{})
	corrupt, wrongBlob, honest := newHost(t, HostConfig{}), newHost(t, HostConfig{}), newHost(t, HostConfig{})
	for _, h := range []host.Host{corrupt, wrongBlob, honest} {
		mustConnect(t, client, h)
	}
	data := randomBlob(2<<20+10, 2)
	store := NewMemStore()
	c, _ := store.Put(data)
	acks := make(chan *protocol.Ack, 1)
	serveCorruptChunk(corrupt, store, acks)
	t.Cleanup(ServeBlobs(wrongBlob, lyingStore{store}))
	t.Cleanup(ServeBlobs(honest, store))

	_, err := FetchBlob(testCtx(t), client, corrupt.ID(), c, 0)
	if !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("corrupted chunk: %v, want ErrHashMismatch", err)
	}
	if ack := <-acks; ack.OK || ack.Reason == "" {
		t.Fatalf("the liar got %+v, want Ack{OK: false} with a reason", ack)
	}
	if _, err := FetchBlob(testCtx(t), client, wrongBlob.ID(), c, 0); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("consistent manifest of the wrong blob: %v, want ErrHashMismatch", err)
	}

	providers := []peer.ID{corrupt.ID(), wrongBlob.ID(), client.ID(), honest.ID()}
	got, from, err := FetchFromAny(testCtx(t), client, providers, c, 0)
	if err != nil || from != honest.ID() || !bytes.Equal(got, data) {
		t.Fatalf("FetchFromAny = %d bytes from %s, %v; want the blob from the honest provider", len(got), from, err)
	}
	<-acks
	_, _, err = FetchFromAny(testCtx(t), client, providers[:2], c, 0)
	if !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("only liars: %v, want ErrHashMismatch", err)
	}
	<-acks
}

func TestFetchCancel(t *testing.T) {
	server, client := newHost(t, HostConfig{}), newHost(t, HostConfig{})
	mustConnect(t, client, server)
	// A provider that reads the request and then says nothing.
	started := make(chan struct{})
	var once sync.Once
	server.SetStreamHandler(protocol.BlobProtocol, func(s network.Stream) {
		protocol.ReadFrame(s)
		once.Do(func() { close(started) })
		buf := make([]byte, 1)
		s.Read(buf) // blocks until the client resets
		s.Reset()
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, err := FetchBlob(ctx, client, server.ID(), protocol.CIDOf([]byte("x")), 0)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("FetchBlob after cancel: %v, want context.Canceled", err)
	}
}

// garbageTarget is a live blob server for garbage-writing tests.
type garbageTarget struct {
	client, server host.Host
	c              cid.Cid
	data           []byte
	seeds          [][]byte
}

func newGarbageTarget(t testing.TB) *garbageTarget {
	g := &garbageTarget{client: newHost(t, HostConfig{}), server: newHost(t, HostConfig{})}
	mustConnect(t, g.client, g.server)
	store := NewMemStore()
	g.data = randomBlob(10000, 3)
	g.c, _ = store.Put(g.data)
	srv := &BlobServer{Store: store, ChunkSize: 4096, IdleTimeout: 300 * time.Millisecond}
	t.Cleanup(srv.Serve(g.server))
	req, _ := protocol.Marshal(&protocol.BlobRequest{V: protocol.Version, CID: g.c.String()})
	ack, _ := protocol.Marshal(&protocol.Ack{V: protocol.Version, OK: true})
	g.seeds = [][]byte{req, append(bytes.Clone(req), ack...), req[:5], {8, 1, 0xff, 0xff, 0xff, 0xff},
		append(bytes.Clone(req), 9, 9, 9), append(bytes.Clone(req), 5, 1, 0, 0, 0, 1, 0xc1)}
	return g
}

// hit opens a stream, writes in, half-closes and reads whatever comes back.
func (g *garbageTarget) hit(t testing.TB, in []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := g.client.NewStream(ctx, g.server.ID(), protocol.BlobProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	s.SetDeadline(time.Now().Add(3 * time.Second))
	s.Write(in)
	s.CloseWrite()
	for {
		if _, err := protocol.ReadFrame(s); err != nil {
			return
		}
	}
}

// TestBlobServerSurvivesGarbage: after seeds and random bytes at live
// streams, the server still serves the blob correctly.
func TestBlobServerSurvivesGarbage(t *testing.T) {
	g := newGarbageTarget(t)
	r := rand.New(rand.NewPCG(4, 4))
	inputs := g.seeds
	for range 40 {
		in := bytes.Clone(g.seeds[r.IntN(len(g.seeds))])
		for range 1 + r.IntN(4) {
			if len(in) > 0 {
				in[r.IntN(len(in))] = byte(r.Uint32())
			}
		}
		inputs = append(inputs, in)
	}
	for _, in := range inputs {
		g.hit(t, in)
	}
	got, err := FetchBlob(testCtx(t), g.client, g.server.ID(), g.c, 0)
	if err != nil || !bytes.Equal(got, g.data) {
		t.Fatalf("after garbage: %v", err)
	}
}

// FuzzBlobServer writes arbitrary bytes at a live blob stream: the server
// must neither panic nor hang.
func FuzzBlobServer(f *testing.F) {
	g := newGarbageTarget(f)
	for _, s := range g.seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) { g.hit(t, in) })
}
