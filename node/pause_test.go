package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"carryon/protocol"
	"carryon/swarm"
)

// chunkReq is request(b) with its own chunk ID.
func chunkReq(b Base, i int) *protocol.EmbedRequest {
	r := request(b)
	h := sha256.Sum256([]byte(fmt.Sprintf("chunk %d", i)))
	r.ChunkID = hex.EncodeToString(h[:])
	return r
}

// lease plays the coordinator's side of one job on s: it returns nil when
// the chunk was computed and acknowledged, or the node's error.
func lease(s io.ReadWriteCloser, req *protocol.EmbedRequest) error {
	defer s.Close()
	if err := protocol.WriteFrame(s, req); err != nil {
		return err
	}
	return collect(s, req)
}

// collect reads the results and the Done of req, sent on s, acknowledges
// them and reads s to its end.
func collect(s io.ReadWriter, req *protocol.EmbedRequest) error {
	for range len(req.Seqs) * len(req.Layers) {
		if _, err := protocol.ReadExpect[*protocol.EmbedResult](s); err != nil {
			return err
		}
	}
	if _, err := protocol.ReadExpect[*protocol.EmbedDone](s); err != nil {
		return err
	}
	if err := protocol.WriteFrame(s, &protocol.Ack{V: protocol.Version, JobID: req.JobID, ChunkID: req.ChunkID, OK: true}); err != nil {
		return err
	}
	io.Copy(io.Discard, s)
	return nil
}

// TestPauseUnderLoad pauses a node (real libp2p hosts, real streams) while
// one chunk computes and two wait for its only slot: the computing chunk
// finishes and is acknowledged, the waiting ones and one sent during the
// pause are handed back with Overloaded (which the coordinator requeues
// without counting a failure); after Resume the handed-back chunks are
// leased again and finish. Every chunk is finished exactly once.
func TestPauseUnderLoad(t *testing.T) {
	b := newTestBase()
	b.entered, b.gate = make(chan struct{}, 8), make(chan struct{})
	c, n := pair(t, b, Config{MaxJobs: 1, MaxQueue: 4})
	type outcome struct {
		chunk int
		err   error
	}
	results := make(chan outcome, 8)
	start := func(i int) {
		s := open(t, c, n)
		go func() { results <- outcome{i, lease(s, chunkReq(b, i))} }()
	}
	finished := map[int]int{}
	start(0)
	<-b.entered // chunk 0 computes
	start(1)
	start(2)
	waitLogged(t, n, "chunk queued: every slot is busy", 2) // chunks 1 and 2 wait for the slot
	if st := n.Status(); st.State != "running" || len(st.Current) != 1 || st.Current[0].Tokens != 8 {
		t.Fatalf("status before the pause: %+v", st)
	}

	n.Pause("test")
	var handedBack []int
	for range 2 {
		o := <-results
		if protocol.KindOf(o.err) != protocol.KindOverloaded || !strings.Contains(o.err.Error(), "handed back") {
			t.Fatalf("queued chunk %d during pause: %v, want an Overloaded hand-back", o.chunk, o.err)
		}
		handedBack = append(handedBack, o.chunk)
	}
	start(3) // arrives while paused
	if o := <-results; o.chunk != 3 || protocol.KindOf(o.err) != protocol.KindOverloaded {
		t.Fatalf("chunk sent during the pause: %+v", o)
	}
	handedBack = append(handedBack, 3)
	if st := n.Status(); st.State != "paused" || st.PausedReason != "test" || st.HandedBack != 3 {
		t.Fatalf("status while paused: %+v", st)
	}
	close(b.gate) // the running chunk finishes during the pause
	if o := <-results; o.chunk != 0 || o.err != nil {
		t.Fatalf("running chunk across the pause: %+v", o)
	}
	finished[0]++

	n.Resume()
	for _, i := range handedBack { // the coordinator's retries
		start(i)
	}
	for range handedBack {
		o := <-results
		if o.err != nil {
			t.Fatalf("chunk %d after resume: %v", o.chunk, o.err)
		}
		finished[o.chunk]++
	}
	for i := 0; i < 4; i++ {
		if finished[i] != 1 {
			t.Errorf("chunk %d finished %d times, want exactly once", i, finished[i])
		}
	}
	// lease returns once the node closed the stream, after counting the job.
	st := n.Status()
	if st.State != "running" || st.Chunks != 4 || st.Tokens != 32 || st.HandedBack != 3 || len(st.Current) != 0 || st.ComputeSecs <= 0 {
		t.Fatalf("final status: %+v", st)
	}
}

// TestMaxMemory: a base whose weights exceed the limit is refused; a chunk
// larger than what is left is handed back with TooLarge (logged at Info,
// counted in Status), a small one runs.
func TestMaxMemory(t *testing.T) {
	sb := sizedBase{newTestBase(), 1 << 20, 1 << 10}
	_, err := New(pairHostless(t), nil, []Base{sb}, Config{MaxMemory: 1 << 19, Logger: quiet})
	if err == nil || !strings.Contains(err.Error(), "memory limit") {
		t.Fatalf("New with weights over the limit: %v", err)
	}
	c, n := pair(t, sb, Config{MaxMemory: 1<<20 + 4<<10})
	big := chunkReq(sb, 1) // 8 tokens · 2 layers · 1 KiB > 4 KiB
	if err := lease(open(t, c, n), big); protocol.KindOf(err) != protocol.KindTooLarge || !strings.Contains(err.Error(), "memory limit") {
		t.Fatalf("chunk over the memory limit: %v", err)
	}
	waitLogged(t, n, "chunk handed back: over this node's memory limit", 1)
	small := chunkReq(sb, 2)
	small.Seqs, small.Layers = [][]int32{{1}}, []int{0}
	if err := lease(open(t, c, n), small); err != nil {
		t.Fatalf("chunk within the limit: %v", err)
	}
	if st := n.Status(); st.TooLarge != 1 || st.HandedBack != 0 || st.Chunks != 1 {
		t.Fatalf("status: %+v", st)
	}
	var b strings.Builder
	WriteStatusText(&b, n.Status())
	if !strings.Contains(b.String(), "1 chunks handed back as over the memory limit") {
		t.Errorf("status text:\n%s", b.String())
	}
}

type sizedBase struct {
	*testBase
	weights, perToken int64
}

func (s sizedBase) WeightBytes() int64          { return s.weights }
func (s sizedBase) TokenBytes(layers int) int64 { return s.perToken * int64(layers) }

// TestConditions: schedule windows (wrapping midnight), battery and idle.
func TestConditions(t *testing.T) {
	ws, err := ParseSchedule("22:00-07:00, 12:00-13:30")
	if err != nil || len(ws) != 2 || ws[0].String() != "22:00-07:00" {
		t.Fatalf("ParseSchedule = %v, %v", ws, err)
	}
	for _, bad := range []string{"22:00", "25:00-01:00", "10:00-10:00", "9-17"} {
		if _, err := ParseSchedule(bad); err == nil {
			t.Errorf("ParseSchedule(%q) accepted", bad)
		}
	}
	at := func(h, m int) time.Time { return time.Date(2026, 1, 1, h, m, 0, 0, time.Local) }
	p := &fakeProbe{idle: time.Hour}
	c := Conditions{Schedule: ws, IdleFor: 5 * time.Minute}
	for _, tc := range []struct {
		t    time.Time
		want string
	}{{at(23, 0), ""}, {at(6, 59), ""}, {at(7, 0), "outside the schedule"}, {at(12, 30), ""}, {at(13, 30), "outside"}} {
		if got := c.Why(tc.t, p); (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("Why(%v) = %q, want %q", tc.t.Format("15:04"), got, tc.want)
		}
	}
	p.battery = true
	if got := c.Why(at(23, 0), p); got != "on battery power" {
		t.Errorf("on battery: %q", got)
	}
	c.AllowBattery = true
	p.idle = time.Minute
	if got := c.Why(at(23, 0), p); !strings.Contains(got, "user active") {
		t.Errorf("user active: %q", got)
	}
	p.idleErr = errors.New("no idea")
	if got := c.Why(at(23, 0), p); !strings.Contains(got, "cannot tell") {
		t.Errorf("unknown idle: %q", got)
	}
}

type fakeProbe struct {
	idle    time.Duration
	idleErr error
	battery bool
}

func (f *fakeProbe) IdleTime() (time.Duration, error) { return f.idle, f.idleErr }
func (f *fakeProbe) OnBattery() (bool, error)         { return f.battery, nil }

// TestSystemProbe: the real probe answers without failing where the OS
// tells (here: whatever this machine has; the answer is logged).
func TestSystemProbe(t *testing.T) {
	p := SystemProbe()
	idle, ierr := p.IdleTime()
	bat, berr := p.OnBattery()
	t.Logf("idle %v (%v), on battery %v (%v)", idle, ierr, bat, berr)
	if ierr == nil && idle < 0 {
		t.Errorf("negative idle time %v", idle)
	}
}

// pairHostless is a bare host for New calls that must fail.
func pairHostless(t testing.TB) host.Host {
	h, err := swarm.NewHost(swarm.HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestStatusHandler drives the local page over real HTTP with the client
// that `carryon node status|pause|resume` uses: pause and resume change
// the node's state, a POST without the control header (what another web
// site could send) is refused, the browser page and the text form name the
// totals and limits.
func TestStatusHandler(t *testing.T) {
	_, n := pair(t, newTestBase(), Config{MaxJobs: 2, MaxMemory: 1 << 30})
	srv := httptest.NewServer(StatusHandler(n))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	call := func(verb string) Status {
		t.Helper()
		st, err := Control(ctx, addr, verb)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := call("status"); st.State != "running" || st.Peer != n.h.ID().String() || len(st.Bases) != 1 ||
		!strings.Contains(st.Limits, "2 job slots; memory 1024 MiB") {
		t.Fatalf("status: %+v", st)
	}
	resp, err := http.Post(srv.URL+"/pause", "text/plain", nil) // a cross-site form post has no such header
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || n.Status().State != "running" {
		t.Fatalf("POST /pause without %s: %s, node %s", ControlHeader, resp.Status, n.Status().State)
	}
	if st := call("pause"); st.State != "paused" || st.PausedReason != "paused by the user" || st.PausedSince == nil {
		t.Fatalf("pause: %+v", st)
	}
	page, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if !strings.Contains(string(body), "paused (paused by the user)") || !strings.Contains(string(body), "contributed: 0 chunks") {
		t.Fatalf("GET /:\n%s", body)
	}
	st := call("resume")
	if st.State != "running" {
		t.Fatalf("resume: %+v", st)
	}
	var b strings.Builder
	if err := WriteStatusText(&b, st); err != nil || !strings.Contains(b.String(), "contributed: 0 chunks, 0 tokens") ||
		!strings.Contains(b.String(), "current job: none") || !strings.Contains(b.String(), "limits: ") {
		t.Fatalf("WriteStatusText: %v\n%s", err, b.String())
	}
	if _, err := Control(ctx, addr, "stop"); err == nil {
		t.Error("Control accepted the verb stop")
	}
}

// TestPausedAdvert: a paused node keeps advertising, with FreeSlots 0, at
// once (not an advert interval later); resumed, it advertises free slots
// again. The same holds for a pause by Govern's conditions (on battery).
// Real gossip between two hosts; the coordinator's side is a subscriber.
func TestPausedAdvert(t *testing.T) {
	coord, ctopics := gossipHost(t, nil, "")
	sub := subscribed(t, ctopics.Nodes)
	cfg := DefaultLocalConfig()
	cfg.Logger, cfg.AdvertInterval, cfg.MaxJobs, cfg.MaxQueue = quiet, time.Hour, 2, 1
	n, nh := joinedNode(t, cfg, coord, nil)
	// next returns the node's next advert whose FreeSlots satisfy want.
	// The interval is an hour, so each comes from a join or a pause change
	// (or their few follow-ups, which say the same).
	next := func(what string, want func(int) bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for {
			a, _, err := swarm.NextGossip[*protocol.Advert](ctx, sub)
			if err != nil {
				t.Fatalf("no advert %s: %v", what, err)
			}
			if a.Peer == nh.ID().String() && want(a.FreeSlots) {
				return
			}
		}
	}
	next("with 3 free slots", func(f int) bool { return f == 3 })
	n.Pause("test")
	next("with 0 free slots while paused", func(f int) bool { return f == 0 })
	n.Resume()
	next("with free slots after resume", func(f int) bool { return f == 3 })

	p := &fakeProbe{battery: true}
	if err := n.Govern(Conditions{Poll: time.Hour}, p); err != nil {
		t.Fatal(err)
	}
	if st := n.Status(); st.State != "paused" || st.PausedReason != "on battery power" || !strings.Contains(st.Limits, "pauses on battery") {
		t.Fatalf("status on battery: %+v", st)
	}
	next("with 0 free slots on battery", func(f int) bool { return f == 0 })
	if err := n.Govern(Conditions{}, p); err == nil {
		t.Error("a second Govern was accepted")
	}
}

// TestGovernBeforeStart: conditions given before Start hold from the
// node's first advert (real gossip): a node on battery never offers free
// slots, not even for the moment between Start and its first check.
func TestGovernBeforeStart(t *testing.T) {
	coord, ctopics := gossipHost(t, nil, "")
	sub := subscribed(t, ctopics.Nodes)
	cfg := DefaultLocalConfig()
	cfg.Logger, cfg.AdvertInterval = quiet, time.Hour
	n, nh := joinedNode(t, cfg, coord, func(n *Node) {
		if err := n.Govern(Conditions{Poll: time.Hour}, &fakeProbe{battery: true}); err != nil {
			t.Fatal(err)
		}
		if st := n.Status(); st.State != "paused" || st.PausedReason != "on battery power" {
			t.Fatalf("status before Start: %+v", st)
		}
	})
	// The first advert the coordinator's side receives comes from the
	// join (the one at Start reached nobody); it and its follow-ups say 0.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for got := 0; got < 2; {
		a, _, err := swarm.NextGossip[*protocol.Advert](ctx, sub)
		if err != nil {
			t.Fatalf("adverts: %v (after %d)", err, got)
		}
		if a.Peer != nh.ID().String() {
			continue
		}
		if f := a.FreeSlots; f != 0 {
			t.Fatalf("advert %d of a node on battery offers %d free slots", got, f)
		}
		got++
	}
	if err := n.Govern(Conditions{}, &fakeProbe{}); err == nil {
		t.Error("a second Govern was accepted")
	}
}
