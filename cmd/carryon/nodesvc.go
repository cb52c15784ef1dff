package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"carryon/internal/service"
)

// runNodeService runs `carryon node ARGS` as the Windows service that
// `carryon node --print-service windows` registers: a service has no
// console, so its output goes to carryon-node.log beside the executable
// (else in the temporary directory); the manager's Stop and Shutdown end
// the node like Ctrl-C, its Pause and Continue act like carryon node
// pause and resume. It returns the exit code.
func runNodeService(args []string) int {
	var out io.Writer = io.Discard
	if f, err := openServiceLog(); err == nil {
		defer f.Close()
		out = f
	}
	err := service.RunWindowsService(service.WindowsName, func(ctx context.Context) error {
		return runNode(ctx, args, out, out)
	})
	if err != nil {
		fmt.Fprintf(out, "carryon node (service %s): %v\n", service.WindowsName, err)
		return 1
	}
	return 0
}

// openServiceLog opens the service's log for appending.
func openServiceLog() (*os.File, error) {
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	var err error
	for _, d := range append(dirs, os.TempDir()) {
		var f *os.File
		if f, err = os.OpenFile(filepath.Join(d, service.WindowsName+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			return f, nil
		}
	}
	return nil, err
}
