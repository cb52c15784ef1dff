//go:build !linux

package coordinator

import "time"

// threadCPU: no per-thread CPU clock here; callers use wall time.
func threadCPU() (time.Duration, bool) { return 0, false }

// processCPU: not measured here.
func processCPU() (time.Duration, bool) { return 0, false }
