//go:build !windows

package service

import (
	"context"
	"errors"
)

// IsWindowsService reports whether the Windows service control manager
// started this process: never, on this OS.
func IsWindowsService() bool { return false }

// RunWindowsService fails: there is no Windows service manager here.
func RunWindowsService(string, func(ctx context.Context) error) error {
	return errors.New("service: not Windows: no service control manager")
}
