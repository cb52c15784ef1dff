//go:build windows

package service

import (
	"context"

	"golang.org/x/sys/windows/svc"
)

// IsWindowsService reports whether the Windows service control manager
// started this process.
func IsWindowsService() bool {
	ok, err := svc.IsWindowsService()
	return err == nil && ok
}

// RunWindowsService runs run as the Windows service name (Serve over
// golang.org/x/sys/windows/svc) and returns run's error once the service
// has stopped.
func RunWindowsService(name string, run func(ctx context.Context) error) error {
	h := &handler{run: run}
	if err := svc.Run(name, h); err != nil {
		return err
	}
	return h.err
}

type handler struct {
	run func(ctx context.Context) error
	err error
}

// Execute translates the manager's requests into Commands and Serve's
// reports into svc.Status. Stopped is not sent: svc.Run reports it, with
// the exit code, after Execute returns.
func (h *handler) Execute(_ []string, r <-chan svc.ChangeRequest, s chan<- svc.Status) (bool, uint32) {
	cmds := make(chan Command)
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		for {
			select {
			case <-quit:
				return
			case req := <-r:
				c, ok := map[svc.Cmd]Command{svc.Interrogate: Interrogate, svc.Stop: Stop, svc.Shutdown: Shutdown,
					svc.Pause: Pause, svc.Continue: Continue}[req.Cmd]
				if !ok {
					c = Interrogate // other notifications: report the state
				}
				select {
				case cmds <- c:
				case <-quit:
					return
				}
			}
		}
	}()
	h.err = Serve(context.Background(), cmds, func(st Status) {
		if st.State == Stopped {
			return
		}
		out := svc.Status{State: map[State]svc.State{StartPending: svc.StartPending, Running: svc.Running,
			Paused: svc.Paused, StopPending: svc.StopPending}[st.State]}
		if st.AcceptsStop {
			out.Accepts |= svc.AcceptStop | svc.AcceptShutdown
		}
		if st.AcceptsPause {
			out.Accepts |= svc.AcceptPauseAndContinue
		}
		s <- out
	}, h.run)
	if h.err != nil {
		return true, 1 // service-specific exit code 1: see the log
	}
	return false, 0
}
