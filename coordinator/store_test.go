package coordinator

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"

	"carryon/node"
	"carryon/swarm"
)

func testCID(s string) string { return swarm.CIDOf([]byte(s)).String() }

// TestVersionsAfterRestart publishes an adaptor, then opens a new
// coordinator (a new host, as after a crash) on the same directory: it
// lists the version as its latest and serves the adaptor to a peer.
func TestVersionsAfterRestart(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	tc := testTrainConfig(3, 0)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c1 := newTestCoordinator(t, dir, base, ds, tc)
	if _, ok, err := c1.LatestVersion(); ok || err != nil {
		t.Fatalf("a fresh coordinator has a latest version (%v, %v)", ok, err)
	}
	res0, err := c1.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	v0, err := c1.Publish(ctx, res0)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c1.Train(ctx, ds, Hooks{Parent: v0.CID.String()}) // a boosting stage on top
	if err != nil {
		t.Fatal(err)
	}
	v, err := c1.Publish(ctx, res)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := res.CarryOn.Marshal(res.Meta)
	c1.Close()

	c2 := newTestCoordinator(t, dir, base, ds, tc)
	latest, ok, err := c2.LatestVersion()
	if err != nil || !ok || latest.CID != v.CID.String() || latest.Parent != v0.CID.String() || latest.Step != 3 ||
		latest.Size != len(want) || latest.Metrics["train_loss"] != res.Meta.Metrics["train_loss"] {
		t.Fatalf("latest after restart: %+v, %v, %v; published %s", latest, ok, err, v.CID)
	}
	recs, stored, err := c2.Versions()
	if err != nil || len(recs) != 2 || !stored[0] || !stored[1] || recs[0].CID != v0.CID.String() {
		t.Fatalf("versions after restart: %+v %v %v", recs, stored, err)
	}
	peerH, err := swarm.NewHost(swarm.HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer peerH.Close()
	if err := peerH.Connect(ctx, peer.AddrInfo{ID: c2.h.ID(), Addrs: c2.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	pb, err := swarm.OpenBlocks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer pb.Close()
	px, err := swarm.NewExchange(peerH, pb, swarm.ExchangeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	if _, err := px.Fetch(ctx, v.CID, swarm.Limits{}); err != nil {
		t.Fatal(err)
	}
	got, err := pb.Get(ctx, v.CID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the restarted coordinator served other bytes")
	}
}

// TestStateRejectsForeignFiles: a file that is not a carryon store, a
// bbolt file of another program, a torn copy: each gives an error naming
// the file, and the file is left byte for byte as it was.
func TestStateRejectsForeignFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	s := openTestState(t, good, dir)
	if err := s.write(func(tx *bolt.Tx) error { return putVersion(tx, VersionRecord{CID: testCID("x")}) }); err != nil {
		t.Fatal(err)
	}
	s.close()
	goodBytes, _ := os.ReadFile(good)

	other := filepath.Join(dir, "other.db")
	db, err := bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("theirs")); return err })
	db.Close()

	corrupt := append([]byte(nil), goodBytes...)
	for i := 16; i < 64; i++ { // both meta pages' headers
		corrupt[i] ^= 0xff
		corrupt[4096+i] ^= 0xff
	}
	files := map[string][]byte{
		"text.db":    []byte("versions.jsonl is not a database\n"),
		"corrupt.db": corrupt,
	}
	for name, b := range files {
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	for _, name := range []string{"text.db", "corrupt.db", "other.db"} {
		p := filepath.Join(dir, name)
		before, _ := os.ReadFile(p)
		_, _, err := openState(p, dir, 8, time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "left as it is") {
			t.Errorf("%s: err %v, want one naming the file and saying it is left alone", name, err)
		}
		after, _ := os.ReadFile(p)
		if !bytes.Equal(before, after) {
			t.Errorf("%s was modified", name)
		}
	}
}

// TestStateOpensAfterKill copies a store while its writer is busy (what a
// kill -9 leaves on disk): the copy opens cleanly and holds every commit
// that had returned.
func TestStateOpensAfterKill(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.db")
	s := openTestState(t, p, dir)
	defer s.close()
	stop := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := []byte(fmt.Sprintf("%08d", i))
			s.later(func(tx *bolt.Tx) error { return tx.Bucket(bLeases).Put(k, make([]byte, 100)) })
		}
	}()
	var copies [][]byte
	for range 5 {
		ck := []byte(fmt.Sprint(len(copies)))
		if err := s.groupWrite(func(tx *bolt.Tx) error { return tx.Bucket(bJobs).Put(ck, ck) }, false); err != nil {
			t.Fatal(err)
		}
		// A consistent copy while writes are in flight (bbolt's hot backup);
		// a byte-wise file copy is not one: it can mix pages of different
		// transactions, which no crash leaves. Real kills are tested in
		// cmd/carryon's TestCoordinatorKillAnywhere.
		var buf bytes.Buffer
		if err := s.view(func(tx *bolt.Tx) error { _, err := tx.WriteTo(&buf); return err }); err != nil {
			t.Fatal(err)
		}
		copies = append(copies, buf.Bytes())
	}
	close(stop)
	for i, b := range copies {
		cp := filepath.Join(dir, fmt.Sprintf("copy%d.db", i))
		os.WriteFile(cp, b, 0o600)
		s2, _, err := openState(cp, dir, 16, time.Millisecond)
		if err != nil {
			t.Fatalf("copy %d: %v", i, err)
		}
		n := 0
		s2.view(func(tx *bolt.Tx) error { n = tx.Bucket(bJobs).Stats().KeyN; return nil })
		s2.close()
		if n < i+1 {
			t.Fatalf("copy %d holds %d acknowledged writes, want %d", i, n, i+1)
		}
	}
}

// TestGroupCommit: concurrent chunk writes share transactions, and each
// caller returns only after its own write is committed.
func TestGroupCommit(t *testing.T) {
	dir := t.TempDir()
	s, _, err := openState(filepath.Join(dir, "state.db"), dir, 64, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	const n = 256
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := []byte(fmt.Sprint(i))
			if err := s.groupWrite(func(tx *bolt.Tx) error { return tx.Bucket(bChunks).Put(k, k) }, true); err != nil {
				t.Error(err)
				return
			}
			var got []byte
			s.view(func(tx *bolt.Tx) error { got = tx.Bucket(bChunks).Get(k); return nil })
			if got == nil {
				t.Errorf("write %d acknowledged but not visible", i)
			}
		}()
	}
	wg.Wait()
	s.close()
	if s.grouped != n || s.commits > n/4 {
		t.Fatalf("%d writes in %d commits; want them grouped (at most %d commits)", s.grouped, s.commits, n/4)
	}
	t.Logf("%d chunk writes in %d commits", s.grouped, s.commits)
}

// TestMigratesOldCacheDir: a cache directory of an older carryon
// (versions.jsonl, no store) is indexed once; the log is renamed.
func TestMigratesOldCacheDir(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	dir := t.TempDir()
	a := VersionRecord{CID: testCID("a"), Step: 10, UnixMilli: 1}
	b := VersionRecord{CID: testCID("b"), Parent: a.CID, Step: 20, UnixMilli: 2}
	var log []byte
	for _, r := range []VersionRecord{a, b} {
		line, _ := json.Marshal(r)
		log = append(append(log, line...), '\n')
	}
	log = append(log, `{"cid":"bafk`...) // a torn last line
	os.WriteFile(filepath.Join(dir, "versions.jsonl"), log, 0o644)
	c := newTestCoordinator(t, dir, base, ds, testTrainConfig(3, 0))
	recs, _, err := c.Versions()
	if err != nil || len(recs) != 2 || recs[1].Parent != a.CID {
		t.Fatalf("migrated versions: %+v, %v", recs, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "versions.jsonl.imported")); err != nil {
		t.Fatalf("versions.jsonl was not renamed: %v", err)
	}
}

// TestTrustSurvivesRestart: the nodes' clean verification records are in
// the store; a new coordinator on the same directory starts from them, so
// a node with a long clean record is sampled less (BOINC's adaptive
// replication) from the first chunk after a restart.
func TestTrustSurvivesRestart(t *testing.T) {
	ts := newTestSwarm(t)
	for i := range 2 {
		ts.addNode(newFakeBase(ts.base, 0, honest, uint64(i)), node.Config{})
	}
	dir := t.TempDir()
	c1, _ := ts.coordinator(Config{MinNodes: 2, VerifyFraction: 1, CacheDir: dir})
	if err := c1.Collect(ts.ctx, swarmDataset(501, 12, 1, 8), nil); err != nil {
		t.Fatal(err)
	}
	before := map[string]int{}
	for _, n := range c1.Status().Nodes {
		before[n.Peer] = n.Clean
	}
	c1.Close()
	c2, _ := ts.coordinator(Config{MinNodes: 2, VerifyFraction: 1, CacheDir: dir})
	recs, err := c2.NodeRecords()
	if err != nil {
		t.Fatal(err)
	}
	for p, clean := range before {
		if clean == 0 || recs[p].Clean != clean {
			t.Fatalf("node %s: %d clean in the job, %d in the store after a restart", p, clean, recs[p].Clean)
		}
	}
	if err := c2.Collect(ts.ctx, swarmDataset(502, 2, 1, 8), nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range c2.Status().Nodes {
		if n.Clean < before[n.Peer] {
			t.Fatalf("node %s: %d clean after the restart's job, had %d", n.Peer, n.Clean, before[n.Peer])
		}
		if want := samplingRate(1, n.Clean, false); n.SamplingRate != want || n.SamplingRate >= samplingRate(1, 0, false) {
			t.Fatalf("node %s: sampled at %v with %d clean", n.Peer, n.SamplingRate, n.Clean)
		}
	}
}

// TestResultResentAfterCrash stops a coordinator while its node computes
// (the stream dies before the result is acknowledged), then starts a new
// coordinator with the same identity on the same directory: the node's
// finished result comes back from its memory, so each chunk is computed
// exactly once.
func TestResultResentAfterCrash(t *testing.T) {
	ts := newTestSwarm(t)
	ctx, cancel := context.WithCancel(ts.ctx)
	// The coordinator "crashes" once the node has finished its third
	// chunk, before that result reaches it.
	crash := &crashBase{Base: newFakeBase(ts.base, time.Millisecond, honest, 1), at: 3, crash: cancel}
	tn := ts.addNode(crash, node.Config{OfferInterval: 50 * time.Millisecond})
	dir := t.TempDir()
	ds := swarmDataset(601, 8, 1, 16)
	c1, _ := ts.coordinator(Config{VerifyFraction: -1, CacheDir: dir})
	if err := c1.Collect(ctx, ds, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Collect: %v", err)
	}
	c1.Close()
	c2, _ := ts.coordinator(Config{VerifyFraction: -1, CacheDir: dir})
	cached, total := c2.CacheStatus(ds)
	if cached == 0 || cached == total {
		t.Fatalf("%d of %d chunks cached after the crash; the test needs some but not all", cached, total)
	}
	if err := c2.Collect(ts.ctx, ds, nil); err != nil {
		t.Fatal(err)
	}
	st := tn.n.Stats()
	if st.Computed != int64(total) || st.Resent < 1 {
		t.Fatalf("node computed %d chunks for %d (resent %d): want each computed once and at least one resent", st.Computed, total, st.Resent)
	}
	t.Logf("%d of %d chunks cached at the crash; the node computed %d, resent %d from memory", cached, total, st.Computed, st.Resent)
}

// crashBase calls crash after its at-th forward pass.
type crashBase struct {
	node.Base
	at    int64
	calls atomic.Int64
	crash func()
}

func (b *crashBase) Forward(ids []int32, layers []int) ([][]float32, error) {
	out, err := b.Base.Forward(ids, layers)
	if b.calls.Add(1) == b.at {
		b.crash()
	}
	return out, err
}

// TestStateDamagedFreelist: a store whose freelist page is damaged (bbolt
// panics reading it) gives a clear error and is left as it was.
func TestStateDamagedFreelist(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.db")
	s := openTestState(t, p, dir)
	if err := s.groupWrite(func(tx *bolt.Tx) error { return tx.Bucket(bJobs).Put([]byte("k"), []byte("v")) }, false); err != nil {
		t.Fatal(err)
	}
	s.close()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	// Both meta pages name a freelist page: mark it a leaf page (flags at
	// offset 8 of the page header).
	ps := int(binary.LittleEndian.Uint32(b[16+8:]))
	for _, meta := range []int{0, ps} {
		fl := int(binary.LittleEndian.Uint64(b[meta+16+32:]))
		if fl*ps+10 <= len(b) {
			binary.LittleEndian.PutUint16(b[fl*ps+8:], 0x02)
		}
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = openState(p, dir, 16, time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "left as it is") {
		t.Fatalf("damaged freelist: err %v, want a clear error", err)
	}
	if !strings.Contains(err.Error(), "damaged pages") {
		t.Logf("bbolt reported the damage itself: %v", err)
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(after, b) {
		t.Errorf("the damaged store was written")
	}
}
