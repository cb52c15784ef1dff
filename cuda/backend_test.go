//go:build cuda

package cuda

import (
	"errors"
	"os"
	"testing"

	"carryon/carryon/carryontest"
	"carryon/tensor/tensortest"
)

// openBackend opens GPU 0, or skips the test when there is none, unless
// CARRYON_REQUIRE_GPU=1 (the GPU runner), which turns the skip into a
// failure. (On a machine without the CUDA driver at all, gorgonia.org/cu's
// package init exits the test binary before any test runs: a cuda-tagged
// binary is for GPU machines; plain builds skip through stub_test.go.)
func openBackend(t testing.TB) *Backend {
	d, err := New(0)
	if err != nil {
		if errors.Is(err, ErrNoDevice) && os.Getenv("CARRYON_REQUIRE_GPU") != "1" {
			t.Skipf("no CUDA device: %v (set CARRYON_REQUIRE_GPU=1 to fail instead)", err)
		}
		t.Fatalf("cuda.New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	b, err := NewBackend(d)
	if err != nil {
		t.Fatalf("NewBackend: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// TestBackend runs the shared tensor.Backend suite on the GPU.
func TestBackend(t *testing.T) {
	b := openBackend(t)
	t.Logf("backend %s", b.Name())
	tensortest.RunBackend(t, b, tensortest.Tolerances{})
}

// TestCarryOnTrainStep runs the carry-on's training step on the GPU
// (carryon.DeviceTrainer) and checks it against carryon.Model's CPU step,
// as carryon's tests do for every CPU kernel set.
func TestCarryOnTrainStep(t *testing.T) {
	carryontest.RunTrainStep(t, openBackend(t), carryontest.Tolerances{})
}
