package testenv

import (
	"context"
	"strings"
	"testing"
)

// WaitLine returns the rest of the first line read from lines (a helper
// process's output) that starts with prefix. It fails the test when lines
// closes first (the process, named who, ended) or ctx ends.
func WaitLine(t testing.TB, ctx context.Context, lines <-chan string, who, prefix string) string {
	t.Helper()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("%s ended before printing %q", who, prefix)
			}
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return rest
			}
		case <-ctx.Done():
			t.Fatalf("%s: timed out waiting for %q", who, prefix)
		}
	}
}
