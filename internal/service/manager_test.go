package service

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeNode records Pause and Resume calls.
type fakeNode struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeNode) Pause(reason string) {
	f.mu.Lock()
	f.calls = append(f.calls, "pause: "+reason)
	f.mu.Unlock()
}
func (f *fakeNode) Resume() { f.mu.Lock(); f.calls = append(f.calls, "resume"); f.mu.Unlock() }

// manager plays the service manager: it sends commands and reads reports.
type manager struct {
	t       *testing.T
	cmds    chan Command
	reports chan Status
	done    chan error
}

func serveFake(t *testing.T, run func(ctx context.Context) error) *manager {
	m := &manager{t: t, cmds: make(chan Command), reports: make(chan Status, 16), done: make(chan error, 1)}
	go func() { m.done <- Serve(context.Background(), m.cmds, func(s Status) { m.reports <- s }, run) }()
	return m
}

func (m *manager) expect(want State, accepts bool) {
	m.t.Helper()
	select {
	case s := <-m.reports:
		if s.State != want || s.AcceptsStop != accepts || s.AcceptsPause != accepts {
			m.t.Fatalf("report %+v (%v), want %v accepting stop and pause %v", s, s.State, want, accepts)
		}
	case <-time.After(10 * time.Second):
		m.t.Fatalf("no report; want %v", want)
	}
}

func (m *manager) send(c Command, want State, accepts bool) {
	m.t.Helper()
	m.cmds <- c
	m.expect(want, accepts)
}

// TestServe drives the state machine as the Windows service manager
// would: start, interrogate, pause, a second pause (ignored), continue,
// a continue while running (ignored), pause again, and stop while paused;
// run sees its context end and returns, and Serve reports Stopped.
func TestServe(t *testing.T) {
	n := &fakeNode{}
	ended := make(chan struct{})
	m := serveFake(t, func(ctx context.Context) error {
		Started(ctx, n)
		Started(ctx, n) // a second call changes nothing
		<-ctx.Done()
		close(ended)
		return nil
	})
	m.expect(StartPending, false)
	m.expect(Running, true)
	m.send(Interrogate, Running, true)
	m.send(Pause, Paused, true)
	m.send(Pause, Paused, true)
	m.send(Continue, Running, true)
	m.send(Continue, Running, true)
	m.send(Pause, Paused, true)
	m.send(Stop, StopPending, false)
	<-ended
	m.expect(Stopped, false)
	if err := <-m.done; err != nil {
		t.Fatal(err)
	}
	want := []string{"pause: " + PauseReason, "resume", "pause: " + PauseReason}
	if len(n.calls) != len(want) {
		t.Fatalf("node calls %q, want %q", n.calls, want)
	}
	for i := range want {
		if n.calls[i] != want[i] {
			t.Fatalf("node calls %q, want %q", n.calls, want)
		}
	}
}

// TestServeFailsToStart: run fails before Started; Serve reports Stopped
// and returns its error. A command while starting is answered with the
// current state and not acted on.
func TestServeFailsToStart(t *testing.T) {
	fail := make(chan struct{})
	m := serveFake(t, func(ctx context.Context) error {
		<-fail
		return errors.New("no base")
	})
	m.expect(StartPending, false)
	m.send(Pause, StartPending, false)
	close(fail)
	m.expect(Stopped, false)
	if err := <-m.done; err == nil || err.Error() != "no base" {
		t.Fatalf("Serve returned %v", err)
	}
}

// TestServeShutdown: Shutdown stops like Stop; run's error is returned.
func TestServeShutdown(t *testing.T) {
	m := serveFake(t, func(ctx context.Context) error {
		Started(ctx, &fakeNode{})
		<-ctx.Done()
		return ctx.Err()
	})
	m.expect(StartPending, false)
	m.expect(Running, true)
	m.send(Shutdown, StopPending, false)
	m.expect(Stopped, false)
	if err := <-m.done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve returned %v", err)
	}
}

// TestStartedOutsideService: Started on a context not from Serve does
// nothing.
func TestStartedOutsideService(t *testing.T) {
	Started(context.Background(), &fakeNode{})
	if IsWindowsService() {
		t.Fatal("IsWindowsService on a test process")
	}
}
