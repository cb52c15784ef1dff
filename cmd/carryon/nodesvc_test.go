package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"carryon/internal/service"
	"carryon/node"
)

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestNodeUnderServiceManager runs `carryon node` in-process under the
// service state machine that the Windows service manager drives (the
// Windows adapter only translates its types): Running once the node
// serves, Pause and Continue pause and resume the node (seen on its status
// page), Stop ends runNode cleanly.
func TestNodeUnderServiceManager(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	dir := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", filepath.Join(dir, "xdg"))
	key := filepath.Join(dir, "swarm.key")
	if err := runKeygen(context.Background(), []string{"--out", key}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	statusAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := []string{"--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--dht", "off", "--state", filepath.Join(dir, "state"),
		"--store", filepath.Join(dir, "store"), "--status-addr", statusAddr}
	var out syncBuffer
	cmds, reports, done := make(chan service.Command), make(chan service.Status, 16), make(chan error, 1)
	go func() {
		done <- service.Serve(context.Background(), cmds, func(s service.Status) { reports <- s },
			func(ctx context.Context) error { return runNode(ctx, args, &out, &out) })
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	expect := func(want service.State) {
		t.Helper()
		select {
		case s := <-reports:
			if s.State != want {
				t.Fatalf("service state %v, want %v; node output:\n%s", s.State, want, out.String())
			}
		case err := <-done:
			t.Fatalf("the service ended (%v) before %v; node output:\n%s", err, want, out.String())
		case <-ctx.Done():
			t.Fatalf("no %v report; node output:\n%s", want, out.String())
		}
	}
	state := func() node.Status {
		t.Helper()
		st, err := node.Control(ctx, statusAddr, "status")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	expect(service.StartPending)
	expect(service.Running)
	if st := state(); st.State != "running" {
		t.Fatalf("node %+v", st)
	}
	cmds <- service.Pause
	expect(service.Paused)
	if st := state(); st.State != "paused" || st.PausedReason != service.PauseReason {
		t.Fatalf("node after the manager's Pause: %+v", st)
	}
	cmds <- service.Continue
	expect(service.Running)
	if st := state(); st.State != "running" {
		t.Fatalf("node after the manager's Continue: %+v", st)
	}
	cmds <- service.Stop
	expect(service.StopPending)
	expect(service.Stopped)
	if err := <-done; err != nil {
		t.Fatalf("runNode under the service: %v\n%s", err, out.String())
	}
	for _, want := range []string{`msg="joined swarm"`, `msg="node paused; running chunks finish, queued and new ones are handed back" component=node`, `reason="paused by the service manager"`, `msg="node resumed"`, `msg="node stopping"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("node output lacks %s:\n%s", want, out.String())
		}
	}
}
