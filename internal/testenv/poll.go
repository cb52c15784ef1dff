package testenv

import (
	"testing"
	"time"
)

// Poll waits until cond holds, checking it every 5 ms, and fails t with
// what after within. Only for state that announces no event: go-libp2p-
// pubsub's peer lists (a peer counts once its outbound stream is open, and
// nothing says when; a topic's join event can come first). Wherever there
// is an event (a channel, Log.Wait, a host's event bus), wait on it.
func Poll(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
