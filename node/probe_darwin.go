package node

import (
	"errors"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// SystemProbe on macOS asks IOKit through the command-line tools that ship
// with the OS: `ioreg -c IOHIDSystem` (HIDIdleTime, nanoseconds since the
// last keyboard, mouse or trackpad input) and `pmset -g batt` ("Now
// drawing from 'Battery Power'").
func SystemProbe() Probe { return darwinProbe{} }

type darwinProbe struct{}

var hidIdle = regexp.MustCompile(`"HIDIdleTime" = (\d+)`)

func (darwinProbe) IdleTime() (time.Duration, error) {
	out, err := exec.Command("ioreg", "-c", "IOHIDSystem", "-d", "4").Output()
	if err != nil {
		return 0, err
	}
	m := hidIdle.FindSubmatch(out)
	if m == nil {
		return 0, errors.New("ioreg shows no HIDIdleTime")
	}
	ns, err := strconv.ParseInt(string(m[1]), 10, 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(ns), nil
}

func (darwinProbe) OnBattery() (bool, error) {
	out, err := exec.Command("pmset", "-g", "batt").Output()
	if err != nil {
		return false, err
	}
	return strings.Contains(string(out), "'Battery Power'"), nil
}
