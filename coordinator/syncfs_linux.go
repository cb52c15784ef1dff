package coordinator

import (
	"os"

	"golang.org/x/sys/unix"
)

// payloadsFsynced is false on Linux: payload files are written without
// fsync and made durable together, once per group commit, by syncfs(2) on
// their file system.
const payloadsFsynced = false

// syncPayloads flushes the file system that holds dir (data and metadata,
// renames included).
func syncPayloads(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
