//go:build unix

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
)

// TestInterruptMessage: a command stopped by SIGINT (Ctrl-C) says that it
// was interrupted and exits 130, not "coordinator.CollectLocal: context
// canceled" and 1 as a failure; a command that fails on its own context
// error without a signal still reports its error.
func TestInterruptMessage(t *testing.T) {
	started := make(chan struct{})
	commands["test-wait"] = command{run: func(ctx context.Context, _ []string, _, _ io.Writer) error {
		close(started)
		<-ctx.Done()
		return fmt.Errorf("coordinator.CollectLocal: %w", ctx.Err())
	}}
	commands["test-fail"] = command{run: func(context.Context, []string, io.Writer, io.Writer) error {
		return fmt.Errorf("read data: %w", context.Canceled)
	}}
	t.Cleanup(func() { delete(commands, "test-wait"); delete(commands, "test-fail") })

	var stderr bytes.Buffer
	code := make(chan int)
	go func() { code <- run([]string{"test-wait"}, io.Discard, &stderr) }()
	<-started // signal.NotifyContext is in force: SIGINT goes to the command
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if c := <-code; c != exitInterrupted || stderr.String() != "carryon test-wait: interrupted\n" {
		t.Errorf("interrupted: exit %d, stderr %q", c, stderr.String())
	}
	stderr.Reset()
	if c := run([]string{"test-fail"}, io.Discard, &stderr); c != 1 || !strings.Contains(stderr.String(), "read data: context canceled") {
		t.Errorf("failed without a signal: exit %d, stderr %q", c, stderr.String())
	}
}
