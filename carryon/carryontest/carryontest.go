// Package carryontest checks the carry-on's training step on a
// tensor.Backend (carryon.DeviceTrainer) against carryon.Model's own CPU
// step (LossAndGradBatch and Optimizer.Step, whose backward is checked
// against finite differences in carryon's tests): the loss, every
// gradient, the gradient norm and the parameters and moments after two
// AdamW steps, with stated tolerances. carryon's tests run it on every CPU
// kernel set; cuda/'s tagged tests run it on the GPU.
package carryontest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"carryon/carryon"
	"carryon/tensor"
)

// Tolerances bound the differences between a backend's step and the CPU
// Model's. Zero fields take DefaultTolerances' values.
type Tolerances struct {
	Loss float64 // |Δ loss sum| / |loss sum|
	// Grad bounds max|Δg| / max|g| per tensor (float32 GEMMs and kernels
	// summing in another order).
	Grad float64
	// Param bounds |Δp| / lr per element after the steps, where the CPU
	// gradient of that element is at least 1e-3 of its tensor's largest
	// (AdamW's first steps are ≈ lr·sign(g): a tiny gradient's sign can
	// differ between summation orders); every element must agree within
	// 2·lr per step plus Param·lr.
	Param float64
}

// DefaultTolerances hold for float32 accumulation on CPUs and GPUs
// (cuBLAS SGEMM without TF32, the CUDA kernels).
var DefaultTolerances = Tolerances{Loss: 1e-5, Grad: 1e-4, Param: 1e-2}

func (t Tolerances) fill() Tolerances {
	d := DefaultTolerances
	if t.Loss == 0 {
		t.Loss = d.Loss
	}
	if t.Grad == 0 {
		t.Grad = d.Grad
	}
	if t.Param == 0 {
		t.Param = d.Param
	}
	return t
}

// Config is the small carry-on of the check: two sources (a final state
// of width 24 and another layer's of width 12), width 16 in 2 heads of 8,
// 2 blocks, FFN 40, a vocabulary of 300.
func Config() carryon.Config {
	c := carryon.DefaultConfig(24, 300).WithWidth(16)
	c.Sources = append(c.Sources, carryon.Source{Name: "layer:3", Dim: 12})
	c.Heads, c.FFN, c.MaxSeq, c.Alpha = 2, 40, 16, 0.7
	return c
}

func randn(r *rand.Rand, n int, std float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * std)
	}
	return x
}

// RunTrainStep checks carryon.DeviceTrainer on be against the CPU step.
func RunTrainStep(t *testing.T, be tensor.Backend, tol Tolerances) {
	tol = tol.fill()
	cfg := Config()
	r := rand.New(rand.NewPCG(7, 8))
	ref, err := carryon.New(cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Move every parameter off its initial value (W_Δ = 0 would leave all
	// but W_Δ's gradient zero) so that every gradient is exercised.
	for i, v := range randn(r, len(ref.Params), 0.05) {
		ref.Params[i] += v
	}
	dev := ref.Clone()
	D, V := cfg.D(), cfg.Vocab
	wPred := randn(r, V*D, 0.3)
	// Three sequences of 7, 5 and 1 positions, some targets ignored.
	var seqs []carryon.Seq
	for _, T := range []int{7, 5, 1} {
		sq := carryon.Seq{T: T}
		for _, s := range cfg.Sources {
			sq.Sources = append(sq.Sources, randn(r, T*s.Dim, 1))
		}
		for i := range T {
			tg := int32(r.IntN(V))
			if i == 2 {
				tg = -1
			}
			sq.Targets = append(sq.Targets, tg)
		}
		seqs = append(seqs, sq)
	}
	ocfg := carryon.DefaultOptimConfig(10)
	ocfg.Warmup, ocfg.ClipNorm = 0, 0.5 // the first gradient's norm is above 0.5: clipping runs

	refOpt, err := carryon.NewOptimizer(ref, ocfg)
	if err != nil {
		t.Fatal(err)
	}
	devOpt, err := carryon.NewOptimizer(dev, ocfg)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := carryon.NewDeviceTrainer(be, dev, devOpt, wPred, 7, 13)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	ws := ref.NewBatchWorkspace(7, 13)
	grads := make([]float32, len(ref.Params))
	devGrads := make([]float32, len(ref.Params))
	lr := float64(ocfg.LR)
	for step := 1; step <= 2; step++ {
		count := 0
		for _, sq := range seqs {
			for _, v := range sq.Targets {
				if v >= 0 {
					count++
				}
			}
		}
		scale := 1 / float32(count)
		clear(grads)
		wantLoss, wantCount := ref.LossAndGradBatch(ws, seqs, wPred, scale, grads)
		// Step 1 runs the batch in one pass, step 2 in two (gradient
		// accumulation on the device).
		passes := [][]carryon.Seq{seqs}
		if step == 2 {
			passes = [][]carryon.Seq{seqs[:1], seqs[1:]}
		}
		var gotLoss float64
		gotCount := 0
		for _, p := range passes {
			l, c, err := tr.Accumulate(p, scale)
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			gotLoss, gotCount = gotLoss+l, gotCount+c
		}
		if gotCount != wantCount {
			t.Fatalf("step %d: %d counted targets, want %d", step, gotCount, wantCount)
		}
		if d := math.Abs(gotLoss - wantLoss); d > tol.Loss*math.Abs(wantLoss) {
			t.Errorf("step %d: loss sum %v, CPU model %v (|Δ| %.3g)", step, gotLoss, wantLoss, d)
		}
		if err := tr.Grads(devGrads); err != nil {
			t.Fatal(err)
		}
		for _, tn := range ref.Tensors() {
			a, b := tn.Offset, tn.Offset+tn.Numel()
			checkRel(t, fmt.Sprintf("step %d: gradient of %s", step, tn.Name), devGrads[a:b], grads[a:b], tol.Grad)
		}
		wantNorm := refOpt.Step(grads)
		gotNorm, err := tr.Update()
		if err != nil {
			t.Fatal(err)
		}
		if step == 1 && !(wantNorm > ocfg.ClipNorm) {
			t.Fatalf("gradient norm %v does not reach ClipNorm %v: clipping is not exercised", wantNorm, ocfg.ClipNorm)
		}
		if d := math.Abs(gotNorm - wantNorm); d > tol.Grad*wantNorm {
			t.Errorf("step %d: gradient norm %v, CPU %v", step, gotNorm, wantNorm)
		}
		if devOpt.Steps != refOpt.Steps {
			t.Fatalf("step %d: optimiser counted %d steps, CPU %d", step, devOpt.Steps, refOpt.Steps)
		}
		if err := tr.Download(); err != nil {
			t.Fatal(err)
		}
		for _, tn := range ref.Tensors() {
			a, b := tn.Offset, tn.Offset+tn.Numel()
			var gmax float64
			for _, g := range grads[a:b] {
				gmax = math.Max(gmax, math.Abs(float64(g)))
			}
			for i := a; i < b; i++ {
				d := math.Abs(float64(dev.Params[i]) - float64(ref.Params[i]))
				bound := tol.Param * lr
				if math.Abs(float64(grads[i])) < 1e-3*gmax {
					bound += 2 * lr * float64(step)
				}
				if d > bound || d != d {
					t.Fatalf("step %d: %s[%d] = %v after the update, CPU %v (|Δ| %.3g > %.3g; gradient %v of max %v)",
						step, tn.Name, i-a, dev.Params[i], ref.Params[i], d, bound, grads[i], gmax)
				}
			}
			checkRel(t, fmt.Sprintf("step %d: AdamW m of %s", step, tn.Name), devOpt.M[a:b], refOpt.M[a:b], tol.Grad)
		}
	}
}

// checkRel fails t when max|got − want| > tol·max|want| (or on NaN).
func checkRel(t *testing.T, name string, got, want []float32, tol float64) {
	t.Helper()
	var worst, mw float64
	wi := 0
	for i := range want {
		mw = math.Max(mw, math.Abs(float64(want[i])))
		if d := math.Abs(float64(got[i]) - float64(want[i])); d > worst || d != d {
			worst, wi = d, i
		}
	}
	if worst > tol*mw || worst != worst || (mw == 0 && worst != 0) {
		t.Errorf("%s: max |Δ| = %.3g at %d (got %v, want %v), over %.3g·max|want| = %.3g", name, worst, wi, got[wi], want[wi], tol, tol*mw)
	}
}
