//go:build !amd64 && !arm64

package buildinfo

// cpuFeatures: the kernels use no CPU features on this architecture.
func cpuFeatures() []string { return nil }
