package main

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"carryon/model"
	"carryon/node"
)

// TestVolunteerUnderLoad: real processes. A coordinator runs a job with
// two nodes: B, whose status page the test uses to pause and resume it
// while chunks are leased to it (several times, each right after a
// "chunk leased" line), and A, whose --max-memory holds the base but no
// chunk. The job finishes; B finishes every chunk exactly once (each chunk
// it handed back in a pause came back to it and finished once); A
// finished none and was leased no chunk twice (each refusal told the
// coordinator not to send one as large again), and the coordinator warned
// once per refusal. Both nodes' stderr at default verbosity says what a
// volunteer needs: joined swarm, serving base, chunk leased and finished
// with tokens/s, paused and resumed, handed back, coordinator lost and
// back (the coordinator is killed after the job and restarted).
func TestVolunteerUnderLoad(t *testing.T) {
	dir, bin, key, env := swarmSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	m, err := model.Open("default", model.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	weights := 4 * m.Base.Config.NumParams() // node.served's estimate
	m.Base.Close()

	coordArgs := []string{"coordinator", "--key", key, "--listen", fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", freePort(t)), "--dht", "off",
		"--cache", filepath.Join(dir, "coord"), "--steps", "1", "--min-nodes", "2"}
	coord := start(t, env, bin, coordArgs...)
	addr := coord.waitLine(t, ctx, "listening on ")
	nodeArgs := func(name string, more ...string) []string {
		return append([]string{"node", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", addr, "--dht", "off",
			"--state", filepath.Join(dir, name), "--store", filepath.Join(dir, name+"-store")}, more...)
	}
	statusB := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := start(t, env, bin, nodeArgs("a", "--max-memory", strconv.FormatInt(weights+1<<20, 10), "--status-addr", "")...)
	b := start(t, env, bin, nodeArgs("b", "--threads", "1", "--status-addr", statusB)...)
	b.waitLine(t, ctx, "status page on ")

	const within = 4 * time.Minute
	pauses := 0
	for cycle := 1; cycle <= 4; cycle++ {
		// Pause right after B logs its (3·cycle)th lease: that chunk is
		// computing or queued behind one that is.
		if !b.log.Within(`msg="chunk leased"`, 3*cycle, within) || coord.log.Count(`msg="embeddings collected"`) > 0 {
			break
		}
		if _, err := node.Control(ctx, statusB, "pause"); err != nil {
			t.Fatal(err)
		}
		b.log.Wait(t, `msg="node paused; running chunks finish, queued and new ones are handed back"`, cycle, within)
		if _, err := node.Control(ctx, statusB, "resume"); err != nil {
			t.Fatal(err)
		}
		b.log.Wait(t, `msg="node resumed"`, cycle, within)
		pauses++
	}
	coord.log.Wait(t, `msg="embeddings collected"`, 1, within)
	m2 := regexp.MustCompile(`msg="collecting embeddings".* chunks=(\d+) cached=(\d+)`).FindStringSubmatch(coord.log.String())
	if m2 == nil {
		t.Fatalf("no chunk count in the coordinator's log:\n%s", coord.log.String())
	}
	total, _ := strconv.Atoi(m2[1])
	// The coordinator logs the job collected once the last result is
	// durable, a moment before B reads its acknowledgement and logs the
	// chunk finished: killing it in between leaves B to offer that result
	// again on reconnecting, which it does without a "chunk finished" line.
	b.log.Wait(t, `msg="chunk finished"`, total, within)
	// The coordinator dies and comes back at its address: B says so.
	coord.cmd.Process.Kill()
	coord.cmd.Wait()
	b.log.Wait(t, `msg="lost the connection to coordinator; redialling"`, 1, within)
	coord2 := start(t, env, bin, coordArgs...)
	coord2.waitLine(t, ctx, "listening on ")
	b.log.Wait(t, `msg="coordinator back"`, 1, within)
	// Stop the nodes and read all they said.
	for _, p := range []*proc{a, b} {
		p.cmd.Process.Signal(syscall.SIGINT)
		p.cmd.Wait()
	}
	chunksOf := func(log, msg string) map[string]int {
		n := map[string]int{}
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, `msg="`+msg+`"`) {
				n[regexp.MustCompile(` chunk=(\w+)`).FindStringSubmatch(l)[1]]++
			}
		}
		return n
	}
	bLog, aLog := b.log.String(), a.log.String()
	finished, handedBack := chunksOf(bLog, "chunk finished"), chunksOf(bLog, "chunk handed back")
	if len(finished) != total {
		t.Errorf("node B finished %d distinct chunks; the job has %d", len(finished), total)
	}
	for c, k := range finished {
		if k != 1 {
			t.Errorf("node B finished chunk %s %d times", c, k)
		}
	}
	for c := range handedBack {
		if finished[c] != 1 {
			t.Errorf("chunk %s, handed back in a pause, finished %d times after", c, finished[c])
		}
	}
	refused := chunksOf(aLog, "chunk handed back: over this node's memory limit")
	for c, k := range refused {
		if k != 1 {
			t.Errorf("node A was leased chunk %s %d times after refusing it as too large", c, k)
		}
	}
	nRefused := strings.Count(aLog, `msg="chunk handed back: over this node's memory limit"`)
	if len(refused) == 0 || strings.Count(aLog, `msg="chunk finished"`) != 0 ||
		coord.log.Count(`msg="node cannot take chunks this large; leased elsewhere"`) != nRefused {
		t.Errorf("node A: %d refusals (%d chunks), %d finished; the coordinator warned %d times",
			nRefused, len(refused), strings.Count(aLog, `msg="chunk finished"`), coord.log.Count(`msg="node cannot take chunks this large; leased elsewhere"`))
	}
	// What a volunteer reads at default verbosity.
	for _, want := range []string{`msg="joined swarm"`, `msg="serving base"`, `msg="connected to `, `msg="chunk leased"`,
		`msg="chunk finished"`, ` tokens_per_s=`, `msg="node paused; `, `msg="node resumed"`} {
		if !strings.Contains(bLog, want) {
			t.Errorf("node B's stderr lacks %s", want)
		}
	}
	if !strings.Contains(aLog, `hint="raise --max-memory to take chunks this large"`) {
		t.Error("node A's stderr does not say what to do about its memory limit")
	}
	t.Logf("%d chunks; %d pause/resume cycles on B, %d chunks handed back in them (all finished once after); A refused %d chunks (%d distinct), finished 0",
		total, pauses, len(handedBack), nRefused, len(refused))
	if t.Failed() {
		t.Logf("node B:\n%s\nnode A:\n%s", bLog, aLog)
	}
}
