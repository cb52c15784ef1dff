package service

import (
	"context"
	"fmt"
)

// Running under a service manager. The Windows service control manager
// starts carryon.exe itself and then sends it commands (stop, shutdown,
// pause, continue, interrogate) and expects each state change reported.
// Serve is that protocol's state machine, kept free of Windows calls so
// that it runs and is tested on every OS; RunWindowsService (Windows
// only) connects it to golang.org/x/sys/windows/svc.
//
//	StartPending --Started--> Running --Pause--> Paused --Continue--> Running
//	Running, Paused --Stop/Shutdown--> StopPending --run returns--> Stopped
//	StartPending, Running, Paused --run returns (an error)--> Stopped
//
// Interrogate reports the current state; a command the state does not
// accept is answered with the current state and otherwise ignored.

// Command is a request of the service manager.
type Command uint8

const (
	Interrogate Command = iota + 1
	Stop
	Shutdown
	Pause
	Continue
)

func (c Command) String() string {
	switch c {
	case Interrogate:
		return "interrogate"
	case Stop:
		return "stop"
	case Shutdown:
		return "shutdown"
	case Pause:
		return "pause"
	case Continue:
		return "continue"
	}
	return fmt.Sprintf("command %d", uint8(c))
}

// State is a service's state as reported to the manager.
type State uint8

const (
	StartPending State = iota + 1
	Running
	Paused
	StopPending
	Stopped
)

func (s State) String() string {
	switch s {
	case StartPending:
		return "start pending"
	case Running:
		return "running"
	case Paused:
		return "paused"
	case StopPending:
		return "stop pending"
	case Stopped:
		return "stopped"
	}
	return fmt.Sprintf("state %d", uint8(s))
}

// Status is one report to the manager.
type Status struct {
	State State
	// AcceptsPause: the manager may send Pause and Continue (from Running
	// on, once the service has something to pause).
	AcceptsPause bool
	// AcceptsStop: the manager may send Stop and Shutdown.
	AcceptsStop bool
}

// Pauser is what the manager's Pause and Continue drive (a *node.Node).
type Pauser interface {
	Pause(reason string)
	Resume()
}

// WindowsName is the name carryon's node service is registered under
// (the commands File prints) and runs as.
const WindowsName = "carryon-node"

// PauseReason is the reason a Pause from the service manager gives.
const PauseReason = "paused by the service manager"

type startedKey struct{}

// Started tells the service manager, if ctx comes from Serve, that the
// service runs and p is what its Pause and Continue drive. Elsewhere it
// does nothing, so a command calls it whether or not it runs as a service.
func Started(ctx context.Context, p Pauser) {
	if f, ok := ctx.Value(startedKey{}).(func(Pauser)); ok {
		f(p)
	}
}

// Serve runs run as a service: it reports StartPending, then Running once
// run calls Started with the context it was given, and acts on cmds until
// run returns; then it reports Stopped and returns run's error. Stop and
// Shutdown (or ctx ending) cancel run's context. The calling goroutine
// owns the state; report is called from it only.
func Serve(ctx context.Context, cmds <-chan Command, report func(Status), run func(ctx context.Context) error) error {
	started := make(chan Pauser, 1)
	rctx, cancel := context.WithCancel(context.WithValue(ctx, startedKey{}, func(p Pauser) {
		select {
		case started <- p:
		default: // only the first call counts
		}
	}))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(rctx) }()

	st := Status{State: StartPending}
	var p Pauser
	set := func(s State) {
		st.State = s
		st.AcceptsStop = s == Running || s == Paused
		st.AcceptsPause = st.AcceptsStop
		report(st)
	}
	stop := func() {
		if st.State != StopPending {
			set(StopPending)
			cancel()
		}
	}
	set(StartPending)
	for {
		select {
		case err := <-done:
			set(Stopped)
			return err
		case p = <-started:
			if st.State == StartPending {
				set(Running)
			}
		case <-ctx.Done():
			stop()
			ctx = context.Background() // Done once
		case c := <-cmds:
			switch {
			case (c == Stop || c == Shutdown) && (st.State == Running || st.State == Paused):
				stop()
			case c == Pause && st.State == Running:
				p.Pause(PauseReason)
				set(Paused)
			case c == Continue && st.State == Paused:
				p.Resume()
				set(Running)
			default: // Interrogate, or not accepted now
				report(st)
			}
		}
	}
}
