//go:build !unix

package tensor

import "time"

// cpuTime is not measured where getrusage is missing: benchmarks report
// wall-clock figures only.
func cpuTime() time.Duration { return 0 }
