package node

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SystemProbe on Linux reads, for idle time, the newest of:
//
//   - X11's idle counter through xprintidle, when DISPLAY is set and it is
//     installed;
//   - the access times of terminals (/dev/tty*, /dev/pts/*), as w(1) does;
//   - the interrupt counts of input devices in /proc/interrupts (i8042,
//     HID, touchpads): a change since the last look counts as input.
//
// A USB keyboard shares its interrupt line with other USB devices, so
// disk or camera traffic can read as activity: the error is towards
// working less. For power it reads /sys/class/power_supply: on battery
// when a battery is present and no mains, USB or wireless supply is online.
func SystemProbe() Probe { return &linuxProbe{start: time.Now()} }

type linuxProbe struct {
	mu         sync.Mutex
	start      time.Time
	counts     map[string]uint64
	lastChange time.Time
}

var inputIRQ = []string{"i8042", "hid", "keyboard", "mouse", "touchpad", "elan", "synaptics"}

func (p *linuxProbe) IdleTime() (time.Duration, error) {
	now := time.Now()
	var last time.Time
	found := false
	if os.Getenv("DISPLAY") != "" {
		if out, err := exec.Command("xprintidle").Output(); err == nil {
			if ms, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil {
				found = true
				last = now.Add(-time.Duration(ms) * time.Millisecond)
			}
		}
	}
	ttys, _ := filepath.Glob("/dev/pts/[0-9]*")
	more, _ := filepath.Glob("/dev/tty[0-9]*")
	for _, t := range append(ttys, more...) {
		if at, ok := accessTime(t); ok {
			found = true
			if at.After(last) && !at.After(now) {
				last = at
			}
		}
	}
	if ch, ok := p.irqChange(now); ok {
		found = true
		if ch.After(last) {
			last = ch
		}
	}
	if !found {
		return 0, errors.New("no X11 idle counter (xprintidle), terminal or input-device interrupt to read")
	}
	return now.Sub(last), nil
}

// irqChange returns when the input-device interrupt counts last changed
// (the probe's start when never seen to change).
func (p *linuxProbe) irqChange(now time.Time) (time.Time, bool) {
	f, err := os.Open("/proc/interrupts")
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	counts := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		low := strings.ToLower(line)
		match := false
		for _, k := range inputIRQ {
			match = match || strings.Contains(low, k)
		}
		if !match {
			continue
		}
		fields := strings.Fields(line)
		var sum uint64
		for _, f := range fields[1:] {
			v, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				break
			}
			sum += v
		}
		counts[fields[0]] = sum
	}
	if len(counts) == 0 {
		return time.Time{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counts == nil {
		p.lastChange = p.start
	} else {
		for k, v := range counts {
			if p.counts[k] != v {
				p.lastChange = now
			}
		}
	}
	p.counts = counts
	return p.lastChange, true
}

func (p *linuxProbe) OnBattery() (bool, error) {
	dirs, _ := filepath.Glob("/sys/class/power_supply/*")
	if len(dirs) == 0 {
		return false, errors.New("no power supplies in /sys/class/power_supply")
	}
	battery, external := false, false
	for _, d := range dirs {
		typ := readTrim(filepath.Join(d, "type"))
		switch typ {
		case "Battery":
			if readTrim(filepath.Join(d, "scope")) != "Device" { // not a mouse's battery
				battery = true
			}
		case "Mains", "USB", "USB_C", "USB_PD", "Wireless":
			external = external || readTrim(filepath.Join(d, "online")) == "1"
		}
	}
	return battery && !external, nil
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
