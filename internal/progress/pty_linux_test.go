package progress

import (
	"bytes"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open the pty's slave: %v", err)
	}
	return m, s
}

// TestBarOnATerminal: on a real (pseudo-)terminal, Auto draws the bar in
// place.
func TestBarOnATerminal(t *testing.T) {
	master, slave := openPTY(t)
	defer master.Close()
	if !IsTerminal(slave) {
		t.Fatal("a pty's slave end is not taken for a terminal")
	}
	clk := newClock()
	b := New(slave, "embed", 4, Options{Width: 8, Redraw: -1, Now: clk.now})
	if !b.Terminal() {
		t.Fatal("a bar on a terminal does not draw in place")
	}
	clk.work(b, 4, time.Second)
	b.Done()
	slave.Close()
	out, err := io.ReadAll(master)
	if len(out) == 0 {
		t.Fatalf("nothing read from the terminal: %v", err)
	}
	// The line discipline turns the final \n into \r\n.
	want := []byte("\rembed [==>     ]  25% 1/4 1/s\rembed [====>   ]  50% 2/4 1/s\rembed [======> ]  75% 3/4 1/s" +
		"\rembed [========] 100% 4/4 1/s\r\n")
	if !bytes.Equal(out, want) {
		t.Errorf("terminal got\n%q\nwant\n%q", out, want)
	}
}
