//go:build !(amd64 || arm64) || purego

package tensor

// gemmAvailable lists the implementations this build can run.
var gemmAvailable = []*gemmKernels{goKernels}

var gemmBest = goKernels
