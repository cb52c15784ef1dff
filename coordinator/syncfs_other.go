//go:build !linux

package coordinator

// payloadsFsynced is true where syncfs(2) is missing: each payload file
// is fsynced (and its directory) when written, before its group commit.
const payloadsFsynced = true

func syncPayloads(string) error { return nil }
