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
	cpu := trainIn(t, ctx, t.TempDir(), base, ds, tc)
	tc.Device = tensor.CPU()
	dir := t.TempDir()
	dev := trainIn(t, ctx, dir, base, ds, tc)
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
	again := trainIn(t, ctx, dir, base, ds, tc)
	if again.Resumed != 12 || sameBits(again.CarryOn.Params, dev.CarryOn.Params) >= 0 {
		t.Errorf("resumed at %d; parameters equal: %v", again.Resumed, sameBits(again.CarryOn.Params, dev.CarryOn.Params) < 0)
	}
}

// TestTrainHeadBF16 trains with TrainConfig.HeadBF16 (the LM head in bf16
// where the CPU has AVX512_BF16) and checks it against the exact float32
// head: losses within 1e-3 relative over 12 steps (the bound the kernel
// suite sets per loss; errors do not compound at this learning rate), the
// validation loss within 1e-3, and a run key that differs exactly when the
// bf16 head takes effect. Where the CPU lacks the kernel the two runs are
// the same run, bit for bit.
func TestTrainHeadBF16(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	ctx := context.Background()
	tc := testTrainConfig(12, 6)
	exactC := newTestCoordinator(t, t.TempDir(), base, ds, tc)
	exact, err := exactC.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	tc.HeadBF16 = true
	bf16C := newTestCoordinator(t, t.TempDir(), base, ds, tc)
	bf, err := bf16C.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range bf.Steps {
		w := exact.Steps[i]
		if math.Abs(s.Loss-w.Loss) > 1e-3*math.Abs(w.Loss) {
			t.Errorf("step %d: bf16 head loss %v, exact %v", s.Step, s.Loss, w.Loss)
		}
		if !tensor.NativeBF16() && s.Loss != w.Loss {
			t.Errorf("step %d: without AVX512_BF16 the losses differ (%v, %v)", s.Step, s.Loss, w.Loss)
		}
	}
	if e, w := bf.Evals[len(bf.Evals)-1].Loss, exact.Evals[len(exact.Evals)-1].Loss; math.Abs(e-w) > 1e-3*math.Abs(w) {
		t.Errorf("validation: bf16 head %v, exact %v", e, w)
	}
	k0, err := exactC.runKey(ds, exact.CarryOn.Config, "")
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := bf16C.runKey(ds, bf.CarryOn.Config, "")
	if (k0 != k1) != tensor.NativeBF16() {
		t.Errorf("run keys differ: %v, with the bf16 kernel on this CPU: %v", k0 != k1, tensor.NativeBF16())
	}
	t.Logf("bf16 head in effect: %v; last loss %v vs exact %v", tensor.NativeBF16(), bf.Steps[len(bf.Steps)-1].Loss, exact.Steps[len(exact.Steps)-1].Loss)
}
