//go:build !unix && !windows

package swarm

import "os"

// lockFile does nothing where the platform has no file locks (wasm, plan9):
// there, nothing stops two processes from sharing an identity.
func lockFile(*os.File) error { return nil }
