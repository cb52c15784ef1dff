package carryon_test

import (
	"testing"

	"carryon/carryon/carryontest"
	"carryon/tensor"
)

// TestDeviceTrainerCPU runs the carry-on's training step on the backend
// (carryon.DeviceTrainer) on every CPU kernel set this machine has and
// checks it against the Model's own CPU step; cuda/'s tagged tests run the
// same check on the GPU.
func TestDeviceTrainerCPU(t *testing.T) {
	for _, b := range tensor.CPUBackends() {
		t.Run(b.Name(), func(t *testing.T) { carryontest.RunTrainStep(t, b, carryontest.Tolerances{}) })
	}
}
