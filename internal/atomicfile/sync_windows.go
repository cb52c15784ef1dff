//go:build windows

package atomicfile

// Windows cannot open a directory for syncing with os.Open's flags; NTFS
// makes the rename itself durable enough for our purpose.
func isUnsupportedSync(error) bool { return true }
