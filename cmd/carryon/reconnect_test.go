package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// logProc is a carryon process whose stdout and stderr lines are watched.
type logProc struct {
	cmd    *exec.Cmd
	stdout chan string
	stderr chan string
}

func startLogged(t *testing.T, env []string, bin string, args ...string) *logProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &logProc{cmd: cmd, stdout: make(chan string, 4096), stderr: make(chan string, 4096)}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	for _, pipe := range []struct {
		r  io.Reader
		ch chan string
	}{{outPipe, p.stdout}, {errPipe, p.stderr}} {
		r := pipe.r
		go func() {
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				select {
				case pipe.ch <- sc.Text():
				default: // nobody is reading this far: drop
				}
			}
			close(pipe.ch)
		}()
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return p
}

// waitOutput returns the first line on ch containing want (the rest of it after
// want), failing the test at ctx's end.
func waitOutput(t *testing.T, ctx context.Context, ch <-chan string, what, want string) string {
	t.Helper()
	var seen []string
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				t.Fatalf("%s ended before printing %q; it printed:\n%s", what, want, strings.Join(seen, "\n"))
			}
			if seen = append(seen, l); len(seen) > 30 {
				seen = seen[1:]
			}
			if i := strings.Index(l, want); i >= 0 {
				return strings.TrimSpace(l[i+len(want):])
			}
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s to print %q", what, want)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestReconnectAfterCoordinatorKill: real processes, no DHT. A node works
// for a coordinator; the coordinator is killed with SIGKILL and restarted
// with the same state directory and address. It comes back with the same
// peer ID (kept in its --cache), the node says it lost the coordinator and
// that it is back, by itself, within seconds, and the coordinator has the
// node again. A restarted node keeps its peer ID, and a second node on the
// same state directory is refused while the first runs; carryon node
// pause/resume drive the restarted node through its status page.
func TestReconnectAfterCoordinatorKill(t *testing.T) {
	dir, bin, key, env := swarmSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	listen := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", freePort(t))
	coordArgs := []string{"coordinator", "--key", key, "--listen", listen, "--cache", filepath.Join(dir, "coord"),
		"--dht", "off", "--steps", "20"}
	state := filepath.Join(dir, "nodestate")

	c1 := startLogged(t, env, bin, coordArgs...)
	id1 := strings.Fields(waitOutput(t, ctx, c1.stdout, "coordinator", "coordinator "))[0]
	waitOutput(t, ctx, c1.stdout, "coordinator", "identity: new peer key ")
	addr := waitOutput(t, ctx, c1.stdout, "coordinator", "listening on ")

	n1 := startLogged(t, env, bin, "node", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", addr,
		"--dht", "off", "--state", state, "--advert-interval", "1h")
	nid := strings.Fields(waitOutput(t, ctx, n1.stdout, "node", "node "))[0]
	waitOutput(t, ctx, n1.stderr, "node", `msg="chunk finished"`)
	// The node advertises once an hour: the coordinator saw it because it
	// advertised when the coordinator began listening for nodes.

	c1.cmd.Process.Kill()
	c1.cmd.Wait()
	killed := time.Now()
	waitOutput(t, ctx, n1.stderr, "node", `msg="lost the connection to coordinator; redialling"`)
	t.Logf("node noticed the loss after %v", time.Since(killed).Round(time.Millisecond))

	c2 := startLogged(t, env, bin, coordArgs...)
	id2 := strings.Fields(waitOutput(t, ctx, c2.stdout, "coordinator", "coordinator "))[0]
	if id2 != id1 {
		t.Fatalf("restarted coordinator has peer ID %s, was %s", id2, id1)
	}
	waitOutput(t, ctx, c2.stdout, "coordinator", "identity: peer key ")
	waitOutput(t, ctx, c2.stdout, "coordinator", "listening on ")
	up := time.Now()
	back := waitOutput(t, ctx, n1.stderr, "node", `msg="coordinator back"`)
	reconnect := time.Since(up)
	if l := waitOutput(t, ctx, c2.stderr, "coordinator", `msg="node joined"`); !strings.Contains(l, "node="+nid) {
		t.Fatalf("the restarted coordinator's first node is not ours: %s", l)
	}
	joined := time.Since(up)
	t.Logf("restarted coordinator listening; node back after %v (%s), in the coordinator's job after %v", reconnect.Round(time.Millisecond), back, joined.Round(time.Millisecond))
	if reconnect > 15*time.Second {
		t.Fatalf("the node took %v to come back; its redial backoff is at most 10 s", reconnect)
	}

	// One node per state directory; a restart keeps the peer ID.
	dup := exec.Command(bin, "node", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", addr,
		"--dht", "off", "--state", state)
	dup.Env = append(os.Environ(), env...)
	out, err := dup.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "held by pid") {
		t.Fatalf("a second node on the same state directory: %v\n%s", err, out)
	}
	n1.cmd.Process.Signal(os.Interrupt)
	n1.cmd.Wait()
	statusAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n2 := startLogged(t, env, bin, "node", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", addr,
		"--dht", "off", "--state", state, "--status-addr", statusAddr)
	if got := strings.Fields(waitOutput(t, ctx, n2.stdout, "node", "node "))[0]; got != nid {
		t.Fatalf("restarted node has peer ID %s, was %s", got, nid)
	}

	// carryon node pause|status|resume against the running process.
	waitOutput(t, ctx, n2.stdout, "node", "status page on http://"+statusAddr)
	ctl := func(verb string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, bin, "node", verb, "--addr", statusAddr).CombinedOutput()
		if err != nil {
			t.Fatalf("node %s: %v\n%s", verb, err, out)
		}
		return string(out)
	}
	if out := ctl("pause"); !strings.Contains(out, "node "+nid+": paused (paused by the user)") {
		t.Fatalf("node pause printed:\n%s", out)
	}
	waitOutput(t, ctx, n2.stderr, "node", `msg="node paused; running chunks finish, queued and new ones are handed back"`)
	if out := ctl("resume"); !strings.Contains(out, ": running, up ") || !strings.Contains(out, "contributed: ") {
		t.Fatalf("node resume printed:\n%s", out)
	}
	waitOutput(t, ctx, n2.stderr, "node", `msg="node resumed"`)
}
