package experiments

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProcessCPU is the user+system CPU time of this process so far, from
// /proc/self/stat (in clock ticks, taken as the usual 100 Hz), or 0 without
// /proc. On a shared machine it measures the work a phase did where its
// wall time measures the machine's load too.
func ProcessCPU() time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	// fields after the parenthesised command: state is field 3, utime 14, stime 15
	_, rest, ok := bytes.Cut(b, []byte(") "))
	f := strings.Fields(string(rest))
	if !ok || len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(ut+st) * (time.Second / 100)
}

// LoadAvg is the machine's 1-minute load average from /proc/loadavg, or 0
// without it: recorded next to every wall time, which it disturbs.
func LoadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0
	}
	return v
}
