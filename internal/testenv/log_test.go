package testenv

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// TestLogWaitWakesOnWrite: a writer in another goroutine releases Wait
// exactly when the n-th occurrence lands.
func TestLogWaitWakesOnWrite(t *testing.T) {
	var l Log
	written := make(chan int, 3)
	go func() {
		for i := range 3 {
			fmt.Fprintf(&l, "tick %d\n", i)
			written <- i
		}
	}()
	l.Wait(t, "tick", 3, 10*time.Second)
	if got := l.Count("tick"); got != 3 {
		t.Fatalf("Wait returned with %d ticks, want 3", got)
	}
}

// TestLogWaitTimesOut: Wait fails the test (here a fake TB) when the text
// never comes.
func TestLogWaitTimesOut(t *testing.T) {
	var l Log
	l.Write([]byte("something else"))
	ft := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Wait(ft, "never", 1, 20*time.Millisecond)
	}()
	<-done
	if !ft.failed {
		t.Fatal("Wait returned without the text and without failing")
	}
}

type fatalTB struct {
	testing.TB
	failed bool
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(string, ...any) {
	f.failed = true
	runtime.Goexit()
}
