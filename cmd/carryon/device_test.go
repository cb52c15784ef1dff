//go:build !cuda

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestDeviceCudaWithoutCUDA: a plain build says plainly that it was built
// without CUDA when asked for the GPU, for serving and for training alike.
func TestDeviceCudaWithoutCUDA(t *testing.T) {
	for _, args := range [][]string{
		{"node", "--device", "cuda", "--model", t.TempDir()},
		{"train", "--device", "cuda", "--out", t.TempDir() + "/a.safetensors"},
		{"coordinator", "--device", "cuda"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code == 0 {
			t.Errorf("%v: exit 0", args)
		}
		if !strings.Contains(stderr.String(), "built without CUDA support") {
			t.Errorf("%v: stderr %q does not say it was built without CUDA", args, stderr.String())
		}
	}
}
