package testenv

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// Log is a log sink that tests can wait on: Wait returns as soon as the text
// written so far contains a string, woken by each Write (no polling). Safe
// for concurrent writers; give it to slog.NewTextHandler.
type Log struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed by the next Write; nil when nobody waits
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.b.Write(p)
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return n, err
}

// String returns everything written so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count returns how many times s occurs in the text so far.
func (l *Log) Count(s string) int { return strings.Count(l.String(), s) }

// Wait blocks until the text contains want at least n times (n ≥ 1), or
// fails the test after within, printing the log.
func (l *Log) Wait(t testing.TB, want string, n int, within time.Duration) {
	t.Helper()
	if !l.Within(want, n, within) {
		t.Fatalf("after %v the log does not say %q %d times:\n%s", within, want, n, l.String())
	}
}

// Within reports whether the text contains want at least n times within
// the given time, returning as soon as it does.
func (l *Log) Within(want string, n int, within time.Duration) bool {
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		l.mu.Lock()
		if strings.Count(l.b.String(), want) >= n {
			l.mu.Unlock()
			return true
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
}
