package coordinator

import (
	"context"
	"math"
	"testing"

	"carryon/tensor"
)

// TestTrainOnDevice trains with TrainConfig.Device set to the CPU
// backend (the path `--device cuda` takes, through carryon.DeviceTrainer)
// and checks it against the plain CPU trainer: the same losses, gradient
// norms and final parameters within float32 rounding over 12 steps, and a
// checkpoint written from the device's downloaded state that a device run
// resumes from.
func TestTrainOnDevice(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	ctx := context.Background()
	tc := testTrainConfig(12, 6)
	cpu, err := newTestCoordinator(t, t.TempDir(), base, ds, tc).Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	tc.Device = tensor.CPU()
	dir := t.TempDir()
	dev, err := newTestCoordinator(t, dir, base, ds, tc).Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dev.Steps) != len(cpu.Steps) {
		t.Fatalf("%d device steps, %d CPU steps", len(dev.Steps), len(cpu.Steps))
	}
	for i, s := range dev.Steps {
		w := cpu.Steps[i]
		if math.Abs(s.Loss-w.Loss) > 1e-4*math.Abs(w.Loss) || math.Abs(s.GradNorm-w.GradNorm) > 1e-3*w.GradNorm || s.LR != w.LR {
			t.Errorf("step %d: device loss %v norm %v lr %v, CPU %v %v %v", s.Step, s.Loss, s.GradNorm, s.LR, w.Loss, w.GradNorm, w.LR)
		}
	}
	var worst float64
	for i, p := range dev.CarryOn.Params {
		worst = math.Max(worst, math.Abs(float64(p-cpu.CarryOn.Params[i])))
	}
	if worst > 1e-3 { // lr 1e-2: a few ulp-sized differences moved by AdamW over 12 steps
		t.Errorf("final parameters differ from the CPU run's by up to %.3g", worst)
	}
	if len(dev.Evals) == 0 || math.Abs(dev.Evals[len(dev.Evals)-1].Loss-cpu.Evals[len(cpu.Evals)-1].Loss) > 1e-3 {
		t.Errorf("validation: device %v, CPU %v", dev.Evals, cpu.Evals)
	}
	// The device run's last checkpoint resumes at its end with its parameters.
	again, err := newTestCoordinator(t, dir, base, ds, tc).Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Resumed != 12 || sameBits(again.CarryOn.Params, dev.CarryOn.Params) >= 0 {
		t.Errorf("resumed at %d; parameters equal: %v", again.Resumed, sameBits(again.CarryOn.Params, dev.CarryOn.Params) < 0)
	}
}
