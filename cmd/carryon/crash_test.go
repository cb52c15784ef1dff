package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// kill SIGKILLs p (no chance to clean up, as in a crash or an OOM kill)
// and returns the stdout lines it printed that were not read yet.
func (p *proc) kill(t *testing.T) []string {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	var rest []string
	for l := range p.lines {
		rest = append(rest, l)
	}
	return rest
}

// stop interrupts p, waits for it, and returns its stderr.
func (p *proc) stop(t *testing.T) string {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-done
		t.Fatalf("%s did not stop on SIGINT", p.cmd.Args[1])
	}
	return p.log.String()
}

// nodeJobs reads the acknowledged jobs a stopped node reports.
func nodeJobs(t *testing.T, stderr string) int {
	t.Helper()
	m := regexp.MustCompile(`msg="node stopping" jobs=(\d+)`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("the node did not report its jobs:\n%s", stderr)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// countFiles counts the files under dir whose names end in suffix.
func countFiles(dir, suffix string) int {
	n := 0
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, suffix) {
			n++
		}
		return nil
	})
	return n
}

// atoi parses the leading integer of s.
func atoi(t *testing.T, s string) int {
	t.Helper()
	f := strings.Fields(s)
	if len(f) == 0 {
		t.Fatalf("no number in %q", s)
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// TestCoordinatorCrashResume kills a real coordinator process with SIGKILL
// twice, once while it collects embeddings and once while it trains, and
// restarts it on the same cache directory each time. The restarts must
// lease only the chunks that were not cached (a fresh node's acknowledged
// jobs count them), resume training from the newest checkpoint, and
// publish.
func TestCoordinatorCrashResume(t *testing.T) {
	dir, bin, key, env := swarmSetup(t)
	// 40 records of ~900 bytes: with 256-token windows and 4 windows per
	// chunk, about 40 chunks, each a real forward pass of ~1000 tokens.
	dataPath := wordsData(t, dir, 40, 120)
	cache := filepath.Join(dir, "coord")
	const steps, every = 60, 5
	coordArgs := []string{"coordinator", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--cache", cache,
		"--data", dataPath, "--seq-len", "128", "--chunk-seqs", "4", "--steps", strconv.Itoa(steps),
		"--checkpoint-every", strconv.Itoa(every), "--batch", "4", "--width", "32", "--layers", "1"}
	nodeArgs := func(addr string) []string {
		return []string{"node", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", addr,
			"--advert-interval", "200ms", "--jobs", "1"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Cached frames are UnixFS files in the coordinator's block store
	// (flatfs: one .data file per block), indexed in its state store.
	blockDir := filepath.Join(cache, "ipfs", "blocks")

	// 1. Kill the coordinator once a few chunks are cached.
	c1 := start(t, env, bin, coordArgs...)
	addr := c1.waitLine(t, ctx, "listening on ")
	total := atoi(t, c1.waitLine(t, ctx, "cached 0 of "))
	n1 := start(t, env, bin, nodeArgs(addr)...)
	// A node says "chunk finished" once the coordinator acknowledged the
	// chunk, which it does once the chunk is durable in its cache.
	n1.log.Wait(t, `msg="chunk finished"`, 3, time.Minute)
	c1.kill(t)
	n1.kill(t) // it may be stuck on a job for the dead coordinator
	// What the killed coordinator had made durable: `carryon cache ls`
	// reads its index (a frame counts only once indexed).
	out, err := exec.Command(bin, "cache", "ls", "--cache", cache).CombinedOutput()
	if err != nil {
		t.Fatalf("cache ls: %v\n%s", err, out)
	}
	files := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, " cached frames, ") {
			fmt.Sscanf(l, "%d cached frames", &files)
		}
	}
	if files >= total {
		t.Fatalf("all %d chunks were cached before the kill: the test needs more data", total)
	}
	t.Logf("killed while collecting: %d of %d chunks indexed (%d blocks on disk)", files, total, countFiles(blockDir, ".data"))

	// 2. Restart: it must find the cached chunks and lease only the rest;
	// then kill it once a training checkpoint is on disk.
	c2 := start(t, env, bin, coordArgs...)
	addr = c2.waitLine(t, ctx, "listening on ")
	// Exactly what the index held counts (blocks written but not yet
	// indexed when the kill landed do not).
	cached := 0
	if _, err := fmt.Sscanf(c2.waitLine(t, ctx, "cached "), "%d of", &cached); err != nil {
		t.Fatal(err)
	}
	if cached != files || cached == 0 {
		t.Fatalf("restarted coordinator reports %d of %d chunks cached; 'carryon cache ls' listed %d", cached, total, files)
	}
	n2 := start(t, env, bin, nodeArgs(addr)...)
	first := atoi(t, c2.waitLine(t, ctx, "checkpoint: step "))
	rest := c2.kill(t)
	lastCkpt := first
	for _, l := range rest {
		if s, ok := strings.CutPrefix(l, "checkpoint: step "); ok {
			lastCkpt = atoi(t, s)
		}
		if strings.HasPrefix(l, "adaptor ") {
			t.Fatalf("training finished before the kill: the test needs more steps")
		}
	}
	jobs2 := nodeJobs(t, n2.stop(t))
	if jobs2 != total-cached {
		t.Fatalf("after the restart the node computed %d chunks, want exactly the %d uncached ones of %d", jobs2, total-cached, total)
	}
	t.Logf("killed while training after the checkpoint at step %d; the second node computed %d chunks", lastCkpt, jobs2)

	// 3. Restart again: everything is cached (no node is running), and
	// training resumes from the newest checkpoint and publishes.
	c3 := start(t, env, bin, coordArgs...)
	if got := c3.waitLine(t, ctx, "cached "); got != fmt.Sprintf("%d of %d chunks", total, total) {
		t.Fatalf("second restart reports %q cached, want all %d", got, total)
	}
	resumed := atoi(t, c3.waitLine(t, ctx, "resumed training at step "))
	if resumed < lastCkpt || resumed%every != 0 || resumed >= steps {
		t.Fatalf("resumed at step %d; the last checkpoint printed before the kill was step %d", resumed, lastCkpt)
	}
	var trained []int
	var cid string
	for cid == "" {
		select {
		case l, ok := <-c3.lines:
			if !ok {
				t.Fatal("the coordinator ended without publishing")
			}
			if s, ok := strings.CutPrefix(l, "train: step "); ok {
				trained = append(trained, atoi(t, s))
			}
			if s, ok := strings.CutPrefix(l, "adaptor "); ok {
				cid = s
			}
		case <-ctx.Done():
			t.Fatal("timed out waiting for the adaptor")
		}
	}
	if len(trained) == 0 || trained[0] <= resumed {
		t.Fatalf("after resuming at step %d the coordinator reported steps %v", resumed, trained)
	}
	c3.stop(t)
	// The store lists the version: a restart says it serves it.
	c3b := start(t, env, bin, coordArgs...)
	if got := c3b.waitLine(t, ctx, "serving "); !strings.Contains(got, "latest "+cid) {
		t.Fatalf("restarted coordinator: serving %s; want latest %s", got, cid)
	}
	c3b.stop(t)

	// 4. The same job trained without interruption on a copy of the
	// embeddings (and no checkpoints) gives the same adaptor, bit for bit.
	fresh := filepath.Join(dir, "fresh")
	if err := os.MkdirAll(fresh, 0o755); err != nil {
		t.Fatal(err)
	}
	// The embeddings (the block store, which also holds the published
	// adaptor) and their index (the store also indexes checkpoints, but
	// their files stay behind, so training starts afresh).
	if out, err := exec.Command("cp", "-r", filepath.Join(cache, "ipfs"), filepath.Join(cache, "state.db"), fresh).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	args := append([]string(nil), coordArgs...)
	args[slices.Index(args, cache)] = fresh
	c4 := start(t, env, bin, args...)
	straight := c4.waitLine(t, ctx, "adaptor ")
	if straight != cid {
		t.Fatalf("the resumed run published %s, an uninterrupted run %s", cid, straight)
	}
	t.Logf("resumed at step %d and published %s, the adaptor of an uninterrupted run", resumed, cid)
}

// TestCoordinatorKillAnywhere kills a real coordinator process (SIGKILL)
// at random moments, over 20 seeds: while it leases, commits, trains or
// publishes. The node keeps running across the kills and the restarted
// coordinator dials it. Every time the job must finish, each chunk must be
// computed exactly once (the node's computed count equals the chunk count:
// nothing finished is recomputed; results the coordinator had not made
// durable come back from the node's memory), and training must resume
// from a checkpoint no older than the last one printed before a kill.
func TestCoordinatorKillAnywhere(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary many times")
	}
	dir, bin, key, env := swarmSetup(t)
	dataPath := wordsData(t, dir, 12, 40)
	const seeds, steps, every = 20, 12, 3
	var mu sync.Mutex
	var kills, midCollect, midTrain, afterPublish, resentAll int
	t.Run("seeds", func(t *testing.T) {
		for seed := range seeds {
			t.Run(fmt.Sprint(seed), func(t *testing.T) {
				t.Parallel()
				rng := rand.New(rand.NewPCG(uint64(seed), 7))
				cache := filepath.Join(dir, fmt.Sprint("seed", seed))
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				// Seeds run in parallel: each node has its own state directory
				// (one process per peer identity).
				n := start(t, env, bin, "node", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--dht", "off",
					"--state", filepath.Join(cache, "node"), "--advert-interval", "100ms", "--jobs", "1")
				nodeAddr := n.waitLine(t, ctx, "listening on ")
				args := []string{"coordinator", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--dht", "off",
					"--bootstrap", nodeAddr, "--identity", filepath.Join(cache, "identity.key"), "--cache", cache, "--data", dataPath, "--seq-len", "32", "--chunk-seqs", "1",
					"--steps", fmt.Sprint(steps), "--checkpoint-every", fmt.Sprint(every), "--batch", "2", "--width", "16", "--layers", "1"}
				total, lastCkpt, resumed := 0, 0, -1
				var cid string
				for run := 0; cid == ""; run++ {
					c := start(t, env, bin, args...)
					// Kill at a random moment in the first two runs; let the
					// third finish.
					var deadline <-chan time.Time
					if run < 2 {
						deadline = time.After(time.Duration(rng.IntN(2500)) * time.Millisecond)
					}
					phase, published := "starting", ""
				watch:
					for {
						select {
						case l, ok := <-c.lines:
							if !ok && published != "" {
								cid = published // it exits after publishing
								break watch
							}
							if !ok {
								t.Fatalf("seed %d run %d: the coordinator ended:\n%s", seed, run, c.log.String())
							}
							switch {
							case strings.HasPrefix(l, "cached "):
								phase = "collecting"
								if _, err := fmt.Sscanf(l, "cached %d of %d chunks", new(int), &total); err != nil {
									t.Fatal(err)
								}
							case strings.HasPrefix(l, "resumed training at step "):
								phase = "training"
								resumed = atoi(t, strings.TrimPrefix(l, "resumed training at step "))
								if resumed < lastCkpt {
									t.Fatalf("seed %d: resumed at step %d, but step %d was checkpointed before the kill", seed, resumed, lastCkpt)
								}
							case strings.HasPrefix(l, "checkpoint: step "):
								phase = "training"
								lastCkpt = atoi(t, strings.TrimPrefix(l, "checkpoint: step "))
							case strings.HasPrefix(l, "train: step "):
								phase = "training"
							case strings.HasPrefix(l, "adaptor "):
								phase = "published"
								published = strings.TrimPrefix(l, "adaptor ")
								if deadline == nil {
									cid = published
									break watch
								}
							}
						case <-deadline:
							c.kill(t)
							mu.Lock()
							kills++
							switch phase {
							case "collecting", "starting":
								midCollect++
							case "training":
								midTrain++
							case "published":
								afterPublish++
							}
							mu.Unlock()
							break watch
						case <-ctx.Done():
							t.Fatalf("seed %d run %d: timed out in phase %s:\n%s", seed, run, phase, c.log.String())
						}
					}
					if cid != "" {
						c.cmd.Process.Kill() // it may serve adaptors until interrupted
						c.cmd.Wait()
					}
				}
				stderr := n.stop(t)
				m := regexp.MustCompile(`msg="node stopping" jobs=\d+ computed=(\d+) resent=(\d+)`).FindStringSubmatch(stderr)
				if m == nil {
					t.Fatalf("seed %d: the node did not report its counts:\n%s", seed, stderr)
				}
				computed, _ := strconv.Atoi(m[1])
				resent, _ := strconv.Atoi(m[2])
				mu.Lock()
				resentAll += resent
				mu.Unlock()
				if computed != total {
					t.Fatalf("seed %d: the node computed %d chunks for a job of %d (resent %s): some were recomputed", seed, computed, total, m[2])
				}
				t.Logf("seed %d: %d chunks computed once each, %s resent from the node's memory, resumed at %d, adaptor %.16s", seed, computed, m[2], resumed, cid)
				cancel()
			})
		}
	})
	t.Logf("%d kills: %d while starting or collecting, %d while training, %d after publishing; %d results resent from a node's memory instead of recomputed",
		kills, midCollect, midTrain, afterPublish, resentAll)
}

// wordsData writes records JSONL records of words words each (a fixed
// pattern over ten words) to dir/data.jsonl and returns its path.
func wordsData(t *testing.T, dir string, records, words int) string {
	t.Helper()
	var data strings.Builder
	vocab := []string{"carry", "on", "frozen", "base", "volunteer", "bridge", "chunk", "gossip", "adaptor", "swarm"}
	for i := range records {
		var p []string
		for j := range words {
			p = append(p, vocab[(i*7+j*j+j/3)%len(vocab)])
		}
		fmt.Fprintf(&data, `{"text": %q}`+"\n", strings.Join(p, " "))
	}
	path := filepath.Join(dir, "data.jsonl")
	if err := os.WriteFile(path, []byte(data.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
