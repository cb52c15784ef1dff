package node

import (
	"errors"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"
)

// SystemProbe on Windows calls GetLastInputInfo (user32) for idle time and
// GetSystemPowerStatus (kernel32) for power. GetLastInputInfo sees only the
// session the process runs in: a node installed as a service (session 0)
// never sees user input, so --idle needs the node started in the user's
// session (a scheduled task at logon; docs/volunteer.md).
func SystemProbe() Probe { return windowsProbe{} }

type windowsProbe struct{}

var (
	user32               = windows.NewLazySystemDLL("user32.dll")
	kernel32             = windows.NewLazySystemDLL("kernel32.dll")
	procGetLastInputInfo = user32.NewProc("GetLastInputInfo")
	procGetTickCount     = kernel32.NewProc("GetTickCount")
	procGetPowerStatus   = kernel32.NewProc("GetSystemPowerStatus")
)

func (windowsProbe) IdleTime() (time.Duration, error) {
	info := struct{ size, time uint32 }{size: 8}
	if r, _, err := procGetLastInputInfo.Call(uintptr(unsafe.Pointer(&info))); r == 0 {
		return 0, err
	}
	now, _, _ := procGetTickCount.Call()
	return time.Duration(uint32(now)-info.time) * time.Millisecond, nil
}

func (windowsProbe) OnBattery() (bool, error) {
	var st struct {
		acLine, batteryFlag, batteryPercent, systemStatus uint8
		lifeTime, fullLifeTime                            uint32
	}
	if r, _, err := procGetPowerStatus.Call(uintptr(unsafe.Pointer(&st))); r == 0 {
		return false, err
	}
	switch st.acLine {
	case 0:
		return true, nil
	case 1:
		return false, nil
	}
	return false, errors.New("GetSystemPowerStatus: AC line status unknown")
}
