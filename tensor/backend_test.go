package tensor_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"carryon/tensor"
	"carryon/tensor/tensortest"
)

// TestCPUBackends runs the shared backend suite on every CPU kernel set
// this machine has (pure Go always; AVX2 and AVX-512 where present).
func TestCPUBackends(t *testing.T) {
	for _, b := range tensor.CPUBackends() {
		t.Run(b.Name(), func(t *testing.T) { tensortest.RunBackend(t, b, tensortest.Tolerances{}) })
	}
}

// TestSoftmaxXentComposesLMHead checks that SoftmaxXent between two GEMMs
// (logits = y·Wᵀ, dy = dlogits·W) is CrossEntropyLMHead, so a backend that
// passes the suite computes the carry-on's loss.
func TestSoftmaxXentComposesLMHead(t *testing.T) {
	T, D, V := 7, 24, 300
	r := rand.New(rand.NewPCG(3, 4))
	y, w := make([]float32, T*D), make([]float32, V*D)
	for i := range y {
		y[i] = r.Float32()*2 - 1
	}
	for i := range w {
		w[i] = r.Float32()*2 - 1
	}
	tg := []int32{1, -1, 299, 0, 5, -1, 77}
	dyWant := make([]float32, T*D)
	lossWant, count := tensor.CrossEntropyLMHead(dyWant, y, w, tg, T, D, V, 3, 0.5, make([]float32, 3*V))

	logits, loss, dy := make([]float32, T*V), make([]float32, T), make([]float32, T*D)
	tensor.Gemm(false, true, T, V, D, 1, y, D, w, D, 0, logits, V)
	tensor.SoftmaxXent(logits, tg, loss, T, V, 0.5)
	tensor.Gemm(false, false, T, D, V, 1, logits, V, w, D, 0, dy, D)
	var sum float64
	n := 0
	for i, l := range loss {
		sum += float64(l)
		if tg[i] >= 0 {
			n++
		}
	}
	if n != count || math.Abs(sum-lossWant) > 1e-4*math.Abs(lossWant) {
		t.Errorf("loss %v over %d rows, want %v over %d", sum, n, lossWant, count)
	}
	for i := range dy {
		if d := math.Abs(float64(dy[i] - dyWant[i])); d > 1e-5 {
			t.Fatalf("dy[%d] = %v, want %v", i, dy[i], dyWant[i])
		}
	}
}
