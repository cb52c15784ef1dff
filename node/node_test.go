package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/internal/testenv"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
	"carryon/tensor"
)

// testBase is a Base with deterministic hidden states; entered (when set)
// receives a value as Forward starts, and gate (when set) holds it until
// closed.
type testBase struct {
	info    protocol.BaseInfo
	entered chan struct{}
	gate    chan struct{}
}

func newTestBase() *testBase {
	h := sha256.Sum256([]byte("node test base"))
	return &testBase{info: protocol.BaseInfo{Name: "test", WeightsHash: hex.EncodeToString(h[:]), Arch: "test",
		Dim: 16, Layers: 2, Vocab: 100}}
}

func (b *testBase) Info() protocol.BaseInfo { return b.info }

func (b *testBase) Forward(ids []int32, layers []int) ([][]float32, error) {
	if b.entered != nil {
		b.entered <- struct{}{}
	}
	if b.gate != nil {
		<-b.gate
	}
	out := make([][]float32, len(layers))
	for li, l := range layers {
		out[li] = make([]float32, len(ids)*b.info.Dim)
		for i := range out[li] {
			out[li][i] = float32(int(ids[i/b.info.Dim])*(l+3)+i%b.info.Dim) / 50
		}
	}
	return out, nil
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// logs holds the Debug log of each node that pair started, so that tests
// wait for what the node says right after its counters move (no polling).
var logs sync.Map // *Node → *testenv.Log

// waitLogged waits until n's log says msg at least count times.
func waitLogged(t testing.TB, n *Node, msg string, count int) {
	t.Helper()
	l, ok := logs.Load(n)
	if !ok {
		t.Fatal("waitLogged: the node was not started by pair")
	}
	l.(*testenv.Log).Wait(t, `msg="`+msg+`"`, count, 10*time.Second)
}

// pair makes a client host and a started node (no gossip) on loopback in
// a private swarm.
func pair(t testing.TB, b Base, cfg Config) (host.Host, *Node) {
	t.Helper()
	psk := make([]byte, 32)
	for i := range psk {
		psk[i] = byte(i * 7)
	}
	var hs [2]host.Host
	for i := range hs {
		h, err := swarm.NewHost(swarm.HostConfig{PSK: psk})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		hs[i] = h
	}
	if err := hs[0].Connect(context.Background(), peer.AddrInfo{ID: hs[1].ID(), Addrs: hs[1].Addrs()}); err != nil {
		t.Fatal(err)
	}
	log := new(testenv.Log)
	cfg.Logger = slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if len(cfg.Codecs) == 0 {
		cfg.Codecs = []string{"q8"}
	}
	n, err := New(hs[1], nil, []Base{b}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	logs.Store(n, log)
	t.Cleanup(func() { n.Close(); logs.Delete(n) })
	return hs[0], n
}

func request(b Base) *protocol.EmbedRequest {
	h := sha256.Sum256([]byte("chunk"))
	return &protocol.EmbedRequest{V: protocol.Version, JobID: "abc123", ChunkID: hex.EncodeToString(h[:]), BaseHash: b.Info().WeightsHash,
		Layers: []int{-1, 0}, Codec: "q8", Seqs: [][]int32{{1, 2, 3}, {4, 5, 6, 7, 8}}}
}

func open(t testing.TB, c host.Host, n *Node) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := c.NewStream(ctx, n.h.ID(), protocol.EmbedProtocol)
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(10 * time.Second))
	return s
}

// TestEmbedRoundTrip runs a job on a real (random) model: the results are
// the codec's encoding of model.Base.ForwardBatch, and only the ack makes the
// job count.
func TestEmbedRoundTrip(t *testing.T) {
	cfg := model.DemoConfig()
	cfg.Layers = 2
	mb, err := model.NewRandomBase(cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	mb.WeightsHash = newTestBase().info.WeightsHash
	b := Serve(mb, "random")
	c, n := pair(t, b, Config{})
	s := open(t, c, n)
	req := request(b)
	if err := protocol.WriteFrame(s, req); err != nil {
		t.Fatal(err)
	}
	codec, _ := tensor.ParseCodec("q8")
	// The node runs the request's sequences as one batch.
	batch, err := mb.ForwardBatch(req.Seqs, req.Layers)
	if err != nil {
		t.Fatal(err)
	}
	for range len(req.Seqs) * len(req.Layers) {
		res, err := protocol.ReadExpect[*protocol.EmbedResult](s)
		if err != nil {
			t.Fatal(err)
		}
		li := map[int]int{-1: 0, 0: 1}[res.Layer]
		want := codec.Encode(nil, batch[res.Seq][li], len(req.Seqs[res.Seq]), cfg.Dim)
		if res.JobID != req.JobID || res.ChunkID != req.ChunkID || !bytes.Equal(res.Data, want) {
			t.Fatalf("result seq %d layer %d differs from model.Base.ForwardBatch", res.Seq, res.Layer)
		}
	}
	done, err := protocol.ReadExpect[*protocol.EmbedDone](s)
	if err != nil || done.Results != 4 {
		t.Fatalf("done: %+v %v", done, err)
	}
	if n.Stats().Jobs != 0 {
		t.Fatal("job counted before the acknowledgement")
	}
	if err := protocol.WriteFrame(s, &protocol.Ack{V: protocol.Version, JobID: req.JobID, ChunkID: req.ChunkID, OK: true}); err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, s)
	waitLogged(t, n, "chunk finished", 1)
	if st := n.Stats(); st.Tokens != 8 || st.BytesSent != int64(codec.EncodedSize(8, cfg.Dim)*2) || st.Rejected != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestEmbedRejects sends bad requests; each gets a typed error and counts
// as rejected.
func TestEmbedRejects(t *testing.T) {
	b := newTestBase()
	c, n := pair(t, b, Config{})
	for i, tc := range []struct {
		name string
		edit func(r *protocol.EmbedRequest) // nil: send raw instead
		raw  []byte
		kind protocol.ErrorKind
	}{
		{name: "garbage bytes", raw: []byte("\x02\x01\x00\x00\x00\x05hello"), kind: protocol.KindInvalid},
		{name: "wrong message type", raw: mustFrame(t, &protocol.Ack{V: protocol.Version, OK: true}), kind: protocol.KindInvalid},
		{name: "wrong base", edit: func(r *protocol.EmbedRequest) { r.BaseHash = hex.EncodeToString(make([]byte, 32)) }, kind: protocol.KindModelMismatch},
		{name: "unknown codec", edit: func(r *protocol.EmbedRequest) { r.Codec = "q9" }, kind: protocol.KindInvalid},
		{name: "codec not offered", edit: func(r *protocol.EmbedRequest) { r.Codec = "q4" }, kind: protocol.KindInvalid},
		{name: "token outside the vocabulary", edit: func(r *protocol.EmbedRequest) { r.Seqs[1][2] = 100 }, kind: protocol.KindInvalid},
		{name: "layer beyond the base", edit: func(r *protocol.EmbedRequest) { r.Layers = []int{3} }, kind: protocol.KindInvalid},
	} {
		s := open(t, c, n)
		raw := tc.raw
		if tc.edit != nil {
			r := request(b)
			tc.edit(r)
			raw = mustFrame(t, r)
		}
		if _, err := s.Write(raw); err != nil {
			t.Fatal(err)
		}
		s.CloseWrite()
		_, err := protocol.ReadExpect[*protocol.EmbedResult](s)
		if k := protocol.KindOf(err); k != tc.kind {
			t.Errorf("%s: got %v (kind %v), want kind %v", tc.name, err, k, tc.kind)
		}
		s.Reset()
		waitLogged(t, n, "chunk not delivered", i+1)
		if got := n.Stats().Rejected; got != int64(i+1) {
			t.Errorf("%s: %d rejections counted, want %d", tc.name, got, i+1)
		}
	}
	if n.Stats().Jobs != 0 {
		t.Fatalf("stats %+v", n.Stats())
	}
}

func mustFrame(t testing.TB, m protocol.Message) []byte {
	var buf bytes.Buffer
	if err := protocol.WriteFrame(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestOverloaded: with one slot busy and the queue full, a further job is
// refused with KindOverloaded at once.
func TestOverloaded(t *testing.T) {
	b := newTestBase()
	b.entered, b.gate = make(chan struct{}, 4), make(chan struct{})
	c, n := pair(t, b, Config{MaxJobs: 1, MaxQueue: 1})
	busy := open(t, c, n)
	protocol.WriteFrame(busy, request(b))
	<-b.entered // the slot is taken
	queued := open(t, c, n)
	protocol.WriteFrame(queued, request(b))
	waitLogged(t, n, "chunk queued: every slot is busy", 1)
	third := open(t, c, n)
	protocol.WriteFrame(third, request(b))
	_, err := protocol.ReadExpect[*protocol.EmbedResult](third)
	if protocol.KindOf(err) != protocol.KindOverloaded {
		t.Fatalf("third job: %v, want an Overloaded error", err)
	}
	if a := n.advert(); a.FreeSlots != 0 {
		t.Errorf("advert offers %d free slots while full", a.FreeSlots)
	}
	close(b.gate)
	busy.Reset()
	queued.Reset()
}

// TestNoAck: a coordinator that reads everything but never acknowledges
// leaves the job uncounted (rejected).
func TestNoAck(t *testing.T) {
	b := newTestBase()
	c, n := pair(t, b, Config{})
	s := open(t, c, n)
	protocol.WriteFrame(s, request(b))
	for range 4 {
		if _, err := protocol.ReadExpect[*protocol.EmbedResult](s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := protocol.ReadExpect[*protocol.EmbedDone](s); err != nil {
		t.Fatal(err)
	}
	s.Close() // no ack
	waitLogged(t, n, "chunk not delivered", 1)
	if st := n.Stats(); st.Jobs != 0 || st.Tokens != 0 {
		t.Fatalf("unacknowledged job counted: %+v", st)
	}
	// A refusing ack also leaves it uncounted.
	s = open(t, c, n)
	req := request(b)
	protocol.WriteFrame(s, req)
	for range 5 {
		if _, err := protocol.ReadFrame(s); err != nil {
			t.Fatal(err)
		}
	}
	protocol.WriteFrame(s, &protocol.Ack{V: protocol.Version, JobID: req.JobID, ChunkID: req.ChunkID, OK: false, Reason: "superseded"})
	waitLogged(t, n, "chunk not delivered", 2)
	if n.Stats().Jobs != 0 {
		t.Fatalf("refused job counted: %+v", n.Stats())
	}
}

// TestClose: Close before Start, Start after Close, a second Close
// (net.ErrClosed), and no intake after Close.
func TestClose(t *testing.T) {
	b := newTestBase()
	h, err := swarm.NewHost(swarm.HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	n, err := New(h, nil, []Base{b}, Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("close before start: %v", err)
	}
	if err := n.Start(context.Background()); err == nil {
		t.Fatal("start after close succeeded")
	}
	if err := n.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second close: %v, want net.ErrClosed", err)
	}

	c, n2 := pair(t, b, Config{})
	if err := n2.Start(context.Background()); err == nil {
		t.Fatal("second start succeeded")
	}
	if err := n2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n2.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// No intake: the stream cannot be opened, or (with lazy protocol
	// negotiation) fails on first use.
	if s, err := c.NewStream(ctx, n2.h.ID(), protocol.EmbedProtocol); err == nil {
		s.SetDeadline(time.Now().Add(5 * time.Second))
		protocol.WriteFrame(s, request(b))
		m, err := protocol.ReadFrame(s)
		s.Reset()
		if err == nil {
			t.Fatalf("a closed node answered with %v", m.Type())
		}
	}
	if _, err := New(h, nil, nil, Config{}); err == nil {
		t.Fatal("a node with no base was built")
	}
}
