package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/pnet"

	"carryon/coordinator"
	"carryon/protocol"
	"carryon/swarm"
)

// watchWriter is an io.Writer for a command running in a goroutine: it
// keeps what was written and lets the test wait for a line.
type watchWriter struct {
	mu   sync.Mutex
	buf  strings.Builder
	more chan struct{} // closed and replaced on every write
}

func newWatchWriter() *watchWriter { return &watchWriter{more: make(chan struct{})} }

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	close(w.more)
	w.more = make(chan struct{})
	return len(p), nil
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// wait returns the rest of the first line that starts with prefix, failing
// the test when ctx ends first.
func (w *watchWriter) wait(t *testing.T, ctx context.Context, prefix string) string {
	t.Helper()
	return w.waitFor(t, ctx, prefix, strings.HasPrefix)
}

// waitContains returns the first line containing want.
func (w *watchWriter) waitContains(t *testing.T, ctx context.Context, want string) string {
	t.Helper()
	return w.waitFor(t, ctx, want, func(l, want string) bool { return strings.Contains(l, want) })
}

func (w *watchWriter) waitFor(t *testing.T, ctx context.Context, prefix string, match func(line, prefix string) bool) string {
	t.Helper()
	for {
		w.mu.Lock()
		text, more := w.buf.String(), w.more
		w.mu.Unlock()
		for _, l := range strings.Split(text, "\n") {
			if match(l, prefix) {
				return strings.TrimSpace(strings.TrimPrefix(l, prefix)) // a contained match keeps its line
			}
		}
		select {
		case <-more:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %q:\n%s", prefix, w.String())
		}
	}
}

// background runs a long-lived command (coordinator --serve, node) in a
// goroutine until the test ends.
func background(t *testing.T, run func(context.Context, []string, *watchWriter, *watchWriter) error, args ...string) (stdout, stderr *watchWriter, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr = newWatchWriter(), newWatchWriter()
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		err = run(ctx, args[1:], stdout, stderr)
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30 s", args[0])
		}
		if err != nil && ctx.Err() == nil {
			t.Errorf("%s: %v\n%s", args[0], err, stderr.String())
		}
	}
	t.Cleanup(stop)
	return stdout, stderr, stop
}

// TestTrainFromSwarmCacheAndPin drives the commands in one process over
// real libp2p hosts on loopback in a private swarm, with real bbolt and
// flatfs stores:
//
//   - `carryon train` fills a cache; `carryon coordinator --serve` on that
//     cache serves it (and publishes an adaptor);
//   - `carryon train --from-swarm` with a fresh cache fetches every chunk's
//     embeddings by CID, computes none, and trains the same adaptor bytes;
//   - `carryon cache ls` lists the fetched frames with their CIDs and
//     source; `carryon cache gc` removes nothing they refer to and says so;
//   - `carryon node --pin CID` fetches the published adaptor from the
//     coordinator, pins it in its store and keeps it after it stops.
func TestTrainFromSwarmCacheAndPin(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the default base's forward pass and several commands")
	}
	dir := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", filepath.Join(dir, "xdg"))
	keyText, err := protocol.NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "swarm.key")
	os.WriteFile(key, keyText, 0o600)
	var data strings.Builder
	for i := range 8 {
		fmt.Fprintf(&data, `{"question": "What is %d plus %d?", "answer": "%d + %d = %d\n#### %d"}`+"\n", i, 3*i, i, 3*i, 4*i, 4*i)
	}
	dataPath := filepath.Join(dir, "data.jsonl")
	os.WriteFile(dataPath, []byte(data.String()), 0o644)
	job := []string{"--data", dataPath, "--seq-len", "48", "--steps", "3", "--batch", "2", "--width", "16", "--layers", "1"}
	runOut := func(run func(context.Context, []string, *watchWriter, *watchWriter) error, args ...string) string {
		t.Helper()
		out, errw := newWatchWriter(), newWatchWriter()
		if err := run(context.Background(), args, out, errw); err != nil {
			t.Fatalf("%v: %v\n%s\n%s", args, err, out.String(), errw.String())
		}
		return out.String()
	}
	train := func(ctx context.Context, a []string, o, e *watchWriter) error { return runTrain(ctx, a, o, e) }
	coord := func(ctx context.Context, a []string, o, e *watchWriter) error { return runCoordinator(ctx, a, o, e) }
	nodeCmd := func(ctx context.Context, a []string, o, e *watchWriter) error { return runNode(ctx, a, o, e) }
	cacheCmd := func(ctx context.Context, a []string, o, e *watchWriter) error { return runCache(ctx, a, o, e) }

	cacheA, cacheB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	outA, outB := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	first := runOut(train, append([]string{"--cache", cacheA, "--out", outA}, job...)...)
	if !strings.Contains(first, "\ncomputed ") {
		t.Fatalf("the first train computed nothing:\n%s", first)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The coordinator starting on that cache announces the frames it holds
	// in the swarm's DHT (here one other DHT server, the bootstrap peer).
	d, err := coordinator.OpenCacheDir(cacheA)
	if err != nil {
		t.Fatal(err)
	}
	items, err := d.List(ctx)
	d.Close()
	if err != nil || len(items) == 0 {
		t.Fatalf("the first train's cache lists %d frames (%v)", len(items), err)
	}
	frame, err := protocol.ParseCID(items[len(items)-1].CID)
	if err != nil {
		t.Fatal(err)
	}
	boot, bootDisc := dhtPeer(t, ctx, key)
	cout, cerr, stopCoord := background(t, coord, append([]string{"coordinator", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--dht", "server", "--bootstrap", boot, "--cache", cacheA, "--serve"}, job...)...)
	addr := cout.wait(t, ctx, "listening on ")
	cout.wait(t, ctx, "cached ")
	adaptor := cout.wait(t, ctx, "adaptor ")
	announced := cerr.waitContains(t, ctx, "cached embedding frames held at start announced in the DHT")
	distinct := map[string]bool{}
	for _, it := range items {
		distinct[it.CID] = true
	}
	if want := fmt.Sprintf("frames=%d of=%d", len(distinct), len(distinct)); !strings.Contains(announced, want) {
		t.Fatalf("the coordinator announced %q, want %s", announced, want)
	}
	coordID := addr[strings.LastIndex(addr, "/")+1:]
	provs, err := bootDisc.FindProviders(ctx, frame, 1)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := <-provs; !ok || p.ID.String() != coordID {
		t.Fatalf("the DHT names %v as the provider of the held frame %s, want the coordinator %s", p.ID, frame, coordID)
	}

	second := runOut(train, append([]string{"--cache", cacheB, "--out", outB, "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--from-swarm", addr}, job...)...)
	var fetched, notHeld int
	for _, l := range strings.Split(second, "\n") {
		if strings.HasPrefix(l, "fetched ") {
			fmt.Sscanf(l, "fetched %d chunks", &fetched)
			i := strings.Index(l, "matched; ")
			fmt.Sscanf(l[i+len("matched; "):], "%d not held", &notHeld)
		}
	}
	if fetched == 0 || notHeld != 0 || strings.Contains(second, "\ncomputed ") {
		t.Fatalf("train --from-swarm fetched %d chunks, %d not held; want every chunk fetched and none computed:\n%s", fetched, notHeld, second)
	}
	a, _ := os.ReadFile(outA)
	b, _ := os.ReadFile(outB)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatalf("the adaptor trained on fetched embeddings (%d bytes) differs from the one trained on computed ones (%d bytes)", len(b), len(a))
	}

	// node --pin: fetch the published adaptor from the coordinator, pin it.
	store := filepath.Join(dir, "node-store")
	_, nerr, stopNode := background(t, nodeCmd, "node", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--dht", "off",
		"--bootstrap", addr, "--state", filepath.Join(dir, "node-state"), "--store", store, "--pin", adaptor)
	nerr.waitContains(t, ctx, "adaptor kept")
	stopNode()
	stopCoord()
	blocks, err := swarm.OpenBlocks(store)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := blocks.Pins()
	id, _ := protocol.ParseCID(adaptor)
	if err != nil || pins[id] == "" || !blocks.Has(context.Background(), id) {
		t.Fatalf("after node --pin %s the store pins %v (%v), has it: %v", adaptor, pins, err, blocks.Has(context.Background(), id))
	}
	got, err := blocks.Get(context.Background(), id, 0)
	blocks.Close()
	if pub, _ := os.ReadFile(outA); err != nil || len(got) == 0 {
		t.Fatalf("pinned adaptor: %d bytes (%v); the trained one has %d", len(got), err, len(pub))
	}

	// cache ls / gc on the trainer's cache.
	ls := runOut(cacheCmd, "ls", "--cache", cacheB)
	var frames int
	for _, l := range strings.Split(ls, "\n") {
		if strings.Contains(l, " cached frames, ") {
			fmt.Sscanf(l, "%d cached frames", &frames)
		}
	}
	if frames != fetched || strings.Count(ls, "bafk")+strings.Count(ls, "bafy") < frames || !strings.Contains(ls, "(verified)") {
		t.Fatalf("cache ls lists %d frames, want the %d fetched, each with its CID, one verified:\n%s", frames, fetched, ls)
	}
	gc := runOut(cacheCmd, "gc", "--cache", cacheB)
	if !strings.Contains(gc, "removed 0 index entries and 0 blocks") {
		t.Fatalf("cache gc on a clean cache:\n%s", gc)
	}

	// gc --dry-run names a block that nothing refers to, with its size,
	// and removes nothing; gc then removes exactly that.
	store2, err := swarm.OpenBlocks(coordinator.StoreDir(cacheB))
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := store2.AddBytes(context.Background(), []byte("a frame nothing indexes"))
	store2.Close()
	if err != nil {
		t.Fatal(err)
	}
	wantLine := fmt.Sprintf("block %s (%d bytes)", orphan, len("a frame nothing indexes"))
	dry := runOut(cacheCmd, "gc", "--dry-run", "--cache", cacheB)
	if !strings.Contains(dry, "would remove "+wantLine) || !strings.Contains(dry, "would remove 0 index entries and 1 blocks") ||
		!strings.Contains(dry, "dry run: nothing was removed") {
		t.Fatalf("cache gc --dry-run with one orphan block %s:\n%s", orphan, dry)
	}
	if gc := runOut(cacheCmd, "gc", "--cache", cacheB); !strings.Contains(gc, "removed "+wantLine) || strings.Contains(gc, "would") {
		t.Fatalf("cache gc after the dry run did not remove %s:\n%s", orphan, gc)
	}
	if err := runCache(context.Background(), []string{"ls", "--dry-run", "--cache", cacheB}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--dry-run is a flag of 'cache gc'") {
		t.Fatalf("cache ls --dry-run: %v", err)
	}
	if after := runOut(cacheCmd, "ls", "--cache", cacheB); !strings.Contains(after, fmt.Sprintf("%d cached frames", frames)) {
		t.Fatalf("cache ls after gc:\n%s", after)
	}
}

// dhtPeer starts a DHT server in the swarm of keyFile for the test and
// returns its address (with /p2p/ID) and its discovery.
func dhtPeer(t *testing.T, ctx context.Context, keyFile string) (string, *swarm.Discovery) {
	t.Helper()
	f, err := os.Open(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	psk, err := protocol.ParseSwarmKey(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	h, d := dhtServer(t, ctx, psk)
	return h.Addrs()[0].String() + "/p2p/" + h.ID().String(), d
}

// dhtServer starts a host in the private swarm of psk, connects it to
// peers, and runs a DHT server on it, all closed when the test ends.
func dhtServer(t *testing.T, ctx context.Context, psk pnet.PSK, peers ...host.Host) (host.Host, *swarm.Discovery) {
	t.Helper()
	h, err := swarm.NewHost(swarm.HostConfig{PSK: psk, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	for _, p := range peers {
		if err := h.Connect(ctx, *host.InfoFromHost(p)); err != nil {
			t.Fatal(err)
		}
	}
	d, err := swarm.NewDiscovery(ctx, h, swarm.DiscoveryConfig{Swarm: protocol.SwarmName(psk), Private: true, DHT: swarm.DHTServer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return h, d
}
