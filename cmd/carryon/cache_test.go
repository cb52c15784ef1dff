package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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
	cout, _, stopCoord := background(t, coord, append([]string{"coordinator", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--dht", "off", "--cache", cacheA, "--serve"}, job...)...)
	addr := cout.wait(t, ctx, "listening on ")
	cout.wait(t, ctx, "cached ")
	adaptor := cout.wait(t, ctx, "adaptor ")

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
	if after := runOut(cacheCmd, "ls", "--cache", cacheB); !strings.Contains(after, fmt.Sprintf("%d cached frames", frames)) {
		t.Fatalf("cache ls after gc:\n%s", after)
	}
}
