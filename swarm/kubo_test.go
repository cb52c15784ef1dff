package swarm

// Interop with Kubo (the reference IPFS node): same CIDs for the same
// bytes, and files moving both ways over bitswap inside a private swarm.
// The tests need a Kubo binary: CARRYON_KUBO names it, else the one
// scripts/build-kubo.sh caches in $HOME/.cache/carryon-kubo; they skip
// without one unless CARRYON_REQUIRE_KUBO=1 (.ci/run sets it and builds
// Kubo first).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"carryon/protocol"
)

// kuboCIDs are the CIDs `ipfs add --cid-version=1 --raw-leaves` (Kubo
// v0.43.1) printed for randomBlob(ChunkSize+1, 2) and
// randomBlob(MaxLinks*ChunkSize+5, 3); TestKuboSameCIDs checks them live.
var kuboCIDs = [2]string{
	"bafybeic4w4omvnqdby4zj7qubo2becahs6smm4nlfkgh7uvmb63ldej5cu",
	"bafybeids2oijula3kqa2tiyjlsx3dd63zvk5clx2ovkxdfkie5htyjxurq",
}

// kuboBin returns the Kubo binary, or skips (fails with
// CARRYON_REQUIRE_KUBO=1) without one.
func kuboBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("CARRYON_KUBO")
	if bin == "" {
		home, _ := os.UserHomeDir()
		bin = filepath.Join(home, ".cache", "carryon-kubo", "ipfs-v0.43.1")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CARRYON_REQUIRE_KUBO") == "1" {
			t.Fatalf("no Kubo binary at %s (CARRYON_REQUIRE_KUBO=1): run scripts/build-kubo.sh", bin)
		}
		t.Skipf("no Kubo binary at %s: run scripts/build-kubo.sh $HOME/.cache/carryon-kubo (or set CARRYON_KUBO)", bin)
	}
	return bin
}

// kubo is a Kubo repository (and daemon, once started) for a test.
type kubo struct {
	t    *testing.T
	bin  string
	repo string
}

func newKubo(t *testing.T, swarmKey []byte) *kubo {
	k := &kubo{t: t, bin: kuboBin(t), repo: filepath.Join(t.TempDir(), "kubo")}
	k.run("init", "--profile=test")
	if swarmKey != nil {
		if err := os.WriteFile(filepath.Join(k.repo, "swarm.key"), swarmKey, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

func (k *kubo) cmd(ctx context.Context, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, k.bin, args...)
	c.Env = append(os.Environ(), "IPFS_PATH="+k.repo, "LIBP2P_FORCE_PNET=1")
	return c
}

func (k *kubo) run(args ...string) string {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	c := k.cmd(ctx, args...)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		k.t.Fatalf("ipfs %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// daemon starts the daemon and returns its swarm address (loopback TCP,
// with /p2p/ID).
func (k *kubo) daemon() peer.AddrInfo {
	k.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := k.cmd(ctx, "daemon")
	out, err := c.StdoutPipe()
	if err != nil {
		k.t.Fatal(err)
	}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() { cancel(); c.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Daemon is ready") && !ok {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			k.t.Fatalf("ipfs daemon exited:\n%s", stderr.String())
		}
	case <-time.After(time.Minute):
		k.t.Fatalf("ipfs daemon not ready after a minute:\n%s", stderr.String())
	}
	var id struct {
		ID        string
		Addresses []string
	}
	if err := json.Unmarshal([]byte(k.run("id")), &id); err != nil {
		k.t.Fatal(err)
	}
	for _, a := range id.Addresses {
		if strings.HasPrefix(a, "/ip4/127.0.0.1/tcp/") && !strings.Contains(a, "/ws") {
			ai, err := peer.AddrInfoFromP2pAddr(ma.StringCast(a))
			if err != nil {
				k.t.Fatal(err)
			}
			return *ai
		}
	}
	k.t.Fatalf("Kubo has no loopback TCP address: %v", id.Addresses)
	return peer.AddrInfo{}
}

// TestKuboSameCIDs: `ipfs add --cid-version=1 --raw-leaves` gives every
// file the CID CIDOf gives it.
func TestKuboSameCIDs(t *testing.T) {
	k := newKubo(t, nil)
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
		got := k.run("add", "--cid-version=1", "--raw-leaves", "-Q", "--only-hash", f)
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
	keyText, err := protocol.NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	key, err := protocol.ParseSwarmKey(bytes.NewReader(keyText))
	if err != nil {
		t.Fatal(err)
	}
	k := newKubo(t, keyText)
	kai := k.daemon()
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
	k.run("get", "-o", out, c.String())
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, adaptor) {
		t.Fatalf("ipfs get %s: %d bytes, %v: want the adaptor byte for byte", c, len(got), err)
	}

	// Kubo → carryon, both layouts.
	dir := t.TempDir()
	for i, args := range [][]string{{"--cid-version=1", "--raw-leaves"}, {}} {
		data := randomBlob(2*ChunkSize+77, uint64(20+i))
		f := filepath.Join(dir, "f")
		os.WriteFile(f, data, 0o644)
		s := k.run(append(append([]string{"add", "-Q"}, args...), f)...)
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
