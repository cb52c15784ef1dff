//go:build !linux && !darwin && !windows

package node

import (
	"errors"
	"time"
)

// SystemProbe on this OS cannot tell idle time or power: --idle is refused
// and battery power is not detected.
func SystemProbe() Probe { return otherProbe{} }

type otherProbe struct{}

func (otherProbe) IdleTime() (time.Duration, error) {
	return 0, errors.New("idle time is not known on this OS")
}

func (otherProbe) OnBattery() (bool, error) {
	return false, errors.New("power state is not known on this OS")
}
