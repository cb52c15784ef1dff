package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/swarm"
)

// TestRosterCommand: add, ls and remove edit the signed roster in the
// coordinator's state directory; each edit raises seq and verifies as
// signed by the coordinator's key.
func TestRosterCommand(t *testing.T) {
	dir := t.TempDir()
	id, err := swarm.OpenIdentity(filepath.Join(dir, swarm.IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	id.Close()
	coord, _ := peer.IDFromPrivateKey(id.Key)
	var ids []string
	for range 3 {
		k, err := swarm.OpenIdentity(filepath.Join(t.TempDir(), "k"))
		if err != nil {
			t.Fatal(err)
		}
		k.Close()
		p, _ := peer.IDFromPrivateKey(k.Key)
		ids = append(ids, p.String())
	}
	run := func(args ...string) string {
		t.Helper()
		var out, errb strings.Builder
		if err := runRoster(context.Background(), append(args, "--cache", dir), &out, &errb); err != nil {
			t.Fatalf("roster %v: %v\n%s", args, err, errb.String())
		}
		return out.String()
	}
	if out := run("ls"); !strings.Contains(out, "no roster") {
		t.Fatalf("ls before any roster: %q", out)
	}
	run("add", ids[0], ids[1], ids[2])
	run("remove", ids[1])
	out := run("ls")
	if !strings.Contains(out, "seq 2") || !strings.Contains(out, coord.String()) || !strings.Contains(out, ids[0]) ||
		strings.Contains(out, ids[1]) || !strings.Contains(out, ids[2]) {
		t.Fatalf("ls after add 3, remove 1:\n%s", out)
	}
	r, err := swarm.LoadRosterFile(filepath.Join(dir, rosterFileName))
	if err != nil {
		t.Fatal(err)
	}
	if signer, err := r.Verify(); err != nil || signer != coord {
		t.Fatalf("roster signed by %s (%v), want the coordinator %s", signer, err, coord)
	}
	var errb strings.Builder
	if err := runRoster(context.Background(), []string{"add", "not-a-peer", "--cache", dir}, &errb, &errb); err == nil {
		t.Fatal("added a malformed peer ID")
	}
	if err := runRoster(context.Background(), []string{"add", ids[1], "--cache", t.TempDir()}, &errb, &errb); err == nil {
		t.Fatal("signed a roster without the coordinator's key")
	}
}
