package progress

import (
	"os"

	"golang.org/x/sys/unix"
)

// isTTY asks the terminal driver (TCGETS), as isatty(3) does.
func isTTY(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
