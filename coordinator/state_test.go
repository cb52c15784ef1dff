package coordinator

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/swarm"
)

func testCID(s string) string { return swarm.CIDOf([]byte(s)).String() }

func TestVersionLogSurvivesTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v", "versions.jsonl")
	l := OpenVersionLog(path)
	if recs, err := l.Records(); err != nil || len(recs) != 0 {
		t.Fatalf("empty log: %v, %v", recs, err)
	}
	a := VersionRecord{CID: testCID("a"), Step: 10, Metrics: map[string]float64{"val_loss": 1.5}, UnixMilli: 1}
	b := VersionRecord{CID: testCID("b"), Parent: a.CID, Step: 20, UnixMilli: 2}
	for _, r := range []VersionRecord{a, b, a} { // a again: recorded once
		if err := l.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	// A crash in the middle of an append leaves a torn last line.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"cid":"bafk`)
	f.Close()
	recs, err := OpenVersionLog(path).Records() // a restarted process
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].CID != a.CID || recs[1].Parent != a.CID || recs[0].Metrics["val_loss"] != 1.5 {
		t.Fatalf("records after a torn line: %+v", recs)
	}
	c := VersionRecord{CID: testCID("c"), Parent: b.CID, Step: 30}
	if err := OpenVersionLog(path).Append(c); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if n := strings.Count(string(data), "\n"); n != 3 || strings.Contains(string(data), `"bafk`+"\n") {
		t.Fatalf("the torn line was not cut off before appending:\n%s", data)
	}
	recs, err = l.Records()
	if err != nil || len(recs) != 3 || recs[2].CID != c.CID {
		t.Fatalf("records: %+v, %v", recs, err)
	}

	// Damage anywhere but at the end is an error naming the line.
	lines := strings.SplitAfter(string(data), "\n")
	lines[1] = "{not json}\n"
	os.WriteFile(path, []byte(strings.Join(lines, "")), 0o644)
	if _, err := l.Records(); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("corrupt middle line: err %v, want one naming line 2", err)
	}
	if err := l.Append(VersionRecord{CID: "nonsense"}); err == nil {
		t.Fatal("appended a record with an invalid CID")
	}
}

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
