package swarm

// Interop with Kubo (the reference IPFS node): same CIDs for the same
// bytes, and files moving both ways over bitswap inside a private swarm.
// The tests need a Kubo binary: CARRYON_KUBO names it, else the one
// scripts/build-kubo.sh caches in $HOME/.cache/carryon-kubo; they skip
// without one unless CARRYON_REQUIRE_KUBO=1 (.ci/run sets it and builds
// Kubo first).

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"carryon/internal/testenv"
	"carryon/protocol"
)

// kuboCIDs are the CIDs `ipfs add --cid-version=1 --raw-leaves` (Kubo
// v0.43.1) printed for randomBlob(ChunkSize+1, 2) and
// randomBlob(MaxLinks*ChunkSize+5, 3); TestKuboSameCIDs checks them live.
var kuboCIDs = [2]string{
	"bafybeic4w4omvnqdby4zj7qubo2becahs6smm4nlfkgh7uvmb63ldej5cu",
	"bafybeids2oijula3kqa2tiyjlsx3dd63zvk5clx2ovkxdfkie5htyjxurq",
}

// kuboDaemon starts k's daemon (testenv.Kubo) and returns its loopback
// TCP address.
func kuboDaemon(t *testing.T, k *testenv.Kubo) peer.AddrInfo {
	t.Helper()
	ai, err := peer.AddrInfoFromP2pAddr(ma.StringCast(k.Daemon()))
	if err != nil {
		t.Fatal(err)
	}
	return *ai
}

// TestKuboSameCIDs: `ipfs add --cid-version=1 --raw-leaves` gives every
// file the CID CIDOf gives it.
func TestKuboSameCIDs(t *testing.T) {
	k := testenv.NewKubo(t, nil)
	dir := t.TempDir()
	for i, tt := range []struct {
		n    int
		seed uint64
	}{{0, 1}, {1, 1}, {ChunkSize, 1}, {ChunkSize + 1, 2}, {MaxLinks*ChunkSize + 5, 3}} {
		data := randomBlob(tt.n, tt.seed)
		f := filepath.Join(dir, "f")
		if err := os.WriteFile(f, data, 0o644); err != nil {
			t.Fatal(err)
		}
		got := k.Run("add", "--cid-version=1", "--raw-leaves", "-Q", "--only-hash", f)
		if want := CIDOf(data).String(); got != want {
			t.Errorf("%d bytes: Kubo %s, carryon %s", tt.n, got, want)
		}
		if i >= 3 && got != kuboCIDs[i-3] {
			t.Errorf("%d bytes: Kubo %s, pinned %s", tt.n, got, kuboCIDs[i-3])
		}
	}
}

// TestKuboExchange: in a private swarm (a key from protocol.NewSwarmKey,
// the file `carryon keygen` writes), Kubo fetches an adaptor from a carryon
// peer byte for byte with `ipfs get`, and the carryon peer fetches files
// Kubo added (CIDv1 raw leaves, and Kubo's default CIDv0 layout with data in
// dag-pb leaves).
func TestKuboExchange(t *testing.T) {
	keyText, key, err := protocol.NewSwarmPSK()
	if err != nil {
		t.Fatal(err)
	}
	k := testenv.NewKubo(t, keyText)
	kai := kuboDaemon(t, k)
	ctx := testCtx(t)
	n := newPeerNode(t, HostConfig{PSK: key}, nil)
	if err := n.h.Connect(ctx, kai); err != nil {
		t.Fatalf("carryon → Kubo in the private swarm: %v", err)
	}

	// carryon → Kubo.
	adaptor := randomBlob(3*ChunkSize+1000, 11)
	c, err := n.b.AddBytes(ctx, adaptor)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "got")
	k.Run("get", "-o", out, c.String())
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, adaptor) {
		t.Fatalf("ipfs get %s: %d bytes, %v: want the adaptor byte for byte", c, len(got), err)
	}

	// Kubo → carryon, both layouts.
	dir := t.TempDir()
	for i, args := range [][]string{{"--cid-version=1", "--raw-leaves"}, {}} {
		data := randomBlob(2*ChunkSize+77, uint64(20+i))
		f := filepath.Join(dir, "f")
		os.WriteFile(f, data, 0o644)
		s := k.Run(append(append([]string{"add", "-Q"}, args...), f)...)
		kc, err := cid.Decode(s)
		if err != nil {
			t.Fatal(err)
		}
		st, err := n.x.Fetch(ctx, kc, Limits{Idle: 20 * time.Second})
		if err != nil {
			t.Fatalf("fetch %s (ipfs add %v) from Kubo: %v", kc, args, err)
		}
		if st.Peers[kai.ID] == 0 {
			t.Fatalf("no blocks from Kubo: %v", st.Peers)
		}
		got, err := n.b.Get(ctx, kc, 0)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("file %s from Kubo: %d bytes, %v", kc, len(got), err)
		}
	}
}
